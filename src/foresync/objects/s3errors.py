"""S3's error codes, each with its HTTP status (the S3 API reference, "Error responses").

Every refusal the front end gives is an ``S3Error`` raised from a pure core or the store and
turned into S3's XML error document at the one boundary in ``s3.py``; nothing else is sent as an
error, so a client always gets a code it knows.
"""

from __future__ import annotations

from foresync.errors import ForesyncError

STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "BadDigest": 400,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MetadataTooLarge": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "SignatureDoesNotMatch": 403,
    "XAmzContentSHA256Mismatch": 400,
}


class S3Error(ForesyncError):
    """A refusal with an S3 error code; ``status`` comes from the code."""

    def __init__(self, code: str, message: str, resource: str = "") -> None:
        super().__init__(f"{code}: {message}")
        if code not in STATUS:
            raise ValueError(f"unknown S3 error code {code!r}")
        self.code = code
        self.message = message
        self.resource = resource

    @property
    def status(self) -> int:
        return STATUS[self.code]

"""Objects: an S3-compatible front end and a crash-safe object store (issue 18, claims 20/40/60).

Pure cores (no I/O): ``names`` (bucket and key rules), ``s3errors`` (S3 error codes), ``sigv4``
(AWS Signature V4), ``chunked`` (aws-chunked upload bodies), ``checksums`` (x-amz-checksum-*),
``ranges`` (HTTP Range), ``listing`` (ListObjects pagination), ``xmldoc`` (S3 XML documents) and
``predict`` (which objects a written key predicts). Adapters: ``store`` (files, fsync, rename)
and ``s3`` (aiohttp).
"""

"""Opening shards wherever they are: a local path, ``pipe:COMMAND`` (webdataset's own opener), or
a URL fsspec knows (``http(s)://`` through aiohttp, ``s3://`` through s3fs; an S3-compatible store
through the standard ``AWS_ENDPOINT_URL``). No home-made network client: fsspec's, with time-outs,
so a stalled connection fails instead of hanging. Retrying is the reader's (tarstream.py), which
knows how far into a shard it got.
"""
import os
from typing import IO, Dict

from ..errors import UserError

REMOTE = ("http://", "https://", "s3://", "gs://", "gcs://", "az://", "abfs://")


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE)


def _options(url: str, timeout: float) -> Dict:
    """fsspec storage options that bound every wait by ``timeout`` seconds."""
    if url.startswith(("http://", "https://")):
        import aiohttp
        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, connect=timeout,
                                                                   sock_connect=timeout, sock_read=timeout)}}
    if url.startswith("s3://"):
        return {"config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout,
                                  "retries": {"max_attempts": 1}}}  # the reader retries, knowing its position
    return {}


def open_shard(url: str, timeout: float = 30.0) -> IO[bytes]:
    """A readable binary stream of one shard. A shard that does not exist raises FileNotFoundError
    (permanent: not retried); anything else a network can do raises what fsspec raises."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen
        return gopen(url, "rb")
    if is_remote(url):
        try:
            import fsspec
        except ImportError:
            raise UserError(f"{url}: remote shards need fsspec (pip install 'uniemox[remote]')") from None
        try:
            return fsspec.open(url, "rb", **_options(url, timeout)).open()
        except ImportError as exc:  # s3fs or aiohttp missing
            raise UserError(f"{url}: {exc} (pip install 'uniemox[remote]')") from None
    return open(url, "rb")


def is_missing(exc: BaseException) -> bool:
    """A shard that is not there (not worth a retry): FileNotFoundError, or an HTTP 404 that an
    fsspec file raises on its first read."""
    return isinstance(exc, FileNotFoundError) or getattr(exc, "status", None) == 404


def read_text(url: str, timeout: float = 30.0) -> str:
    """A small file (a manifest) next to remote or local shards."""
    if is_remote(url):
        with open_shard(url, timeout) as f:
            return f.read().decode("utf-8")
    with open(url, encoding="utf-8") as f:
        return f.read()


def parent(url: str) -> str:
    """The folder of a shard (its manifest's folder), for paths and URLs alike."""
    return url.rsplit("/", 1)[0] if is_remote(url) else os.path.dirname(os.path.abspath(url))

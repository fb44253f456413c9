"""Bounded connectivity checks, so a machine without network fails in seconds.

TensorFlow's GCS client and TFDS' downloader both retry for minutes before
giving up; a short TCP probe first turns that wait into a clear UserError.
"""

import socket
import threading
from typing import Sequence

from fmx.errors import UserError

PROBE_SECONDS = 5.0
CLOUD_STORAGE_HOST = 'storage.googleapis.com'


def reachable(hosts: Sequence[str], timeout: float = PROBE_SECONDS,
              port: int = 443) -> bool:
  """Whether a TCP connection to any host opens within `timeout` seconds.

  Runs in a daemon thread so that a hanging DNS lookup (which ignores socket
  timeouts) cannot hold the run longer than `timeout`.
  """
  opened = threading.Event()

  def probe():
    for host in hosts:
      try:
        socket.create_connection((host, port), timeout=timeout).close()
        opened.set()
        return
      except OSError:
        continue

  prober = threading.Thread(target=probe, daemon=True)
  prober.start()
  prober.join(timeout)  # returns early once every host has failed
  return opened.is_set()


def require_cloud_storage(path: str, key: str) -> None:
  """UserError, within seconds, if `path` is gs:// and GCS is unreachable."""
  if path.startswith('gs://') and not reachable([CLOUD_STORAGE_HOST]):
    raise UserError(
        f'{key} = {path!r} is on Google Cloud Storage, and this machine cannot '
        f'reach {CLOUD_STORAGE_HOST} (no connection within '
        f'{PROBE_SECONDS:.0f} s). Run where the bucket is reachable, or copy '
        'the data to a local folder and point the path at it.')

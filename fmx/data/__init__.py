"""Dataset entries and the input pipeline built from them."""

from fmx.data import image_folder  # noqa: F401
from fmx.data import mnist_embedded  # noqa: F401
from fmx.data import sklearn_digits  # noqa: F401
from fmx.data import tfds_datasets  # noqa: F401
from fmx.data import tfrecords  # noqa: F401

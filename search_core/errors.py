"""Exceptions whose message is fit to show a user as is (UI, CLI stderr)."""


class SearchError(Exception):
    """Base class: anything with a message a person can act on."""


class ImageError(SearchError):
    """The bytes are not an image we can use (corrupt, not an image, too large, too small)."""


class ImageTooLargeError(ImageError):
    """The upload or the image is over a size limit (HTTP 413). A type, not a phrase in the
    message: Pillow's own "Decompressed data too large" for a corrupt text chunk is a bad
    image (400), not a big upload."""


class CropError(SearchError):
    """The requested region cannot be cropped (too small, empty)."""


class ConfigError(SearchError):
    """The configuration is inconsistent or names something that does not exist."""


class BackendError(SearchError):
    """A backend (AWS service, OpenSearch, model runtime) failed in a way retries did not fix."""


class NotSupportedError(SearchError):
    """The chosen backend cannot do this (for example text queries on an image-only embedder)."""


class SourceError(SearchError):
    """An image source cannot be listed or is not allowed (path outside roots, bad S3 URI)."""


class GoneError(SourceError):
    """The name no longer holds a picture of its own (a link that points nowhere): unlike a
    read error, this is no passing fault, so a picture indexed under the name is gone."""


class ModelMismatchError(ConfigError):
    """The local index holds vectors of another embedder (SEARCH_EMBEDDER changed)."""


class ItemNotFoundError(SearchError):
    """No catalogue item has the given id (REST answers 404)."""

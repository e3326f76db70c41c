"""The mapper SDK's exceptions: each message is meant for the person wiring the device."""

from __future__ import annotations


class MapperError(Exception):
    """Base class."""


class MapperConfigError(MapperError):
    """The mapper's own config file is wrong."""


class DeviceError(MapperError):
    """A device answered with an error, or its value cannot be read or written as declared.

    The device stays online; the error is reported on the property's twin.
    """


class DeviceUnreachable(DeviceError):
    """A device did not answer at all: it goes offline and is retried with backoff."""

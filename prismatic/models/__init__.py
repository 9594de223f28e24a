"""The VLA-Adapter model: configuration, processing, components and checkpoint I/O.

Import from the submodules (`prismatic.models.vla`, `prismatic.models.loading`, ...); this package module
imports nothing itself so that lightweight users (e.g. the data pipeline reading `config`) do not pay for
timm / transformers.
"""

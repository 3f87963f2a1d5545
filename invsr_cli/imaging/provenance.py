"""Provenance: how an output was made, recorded inside the output file and read back by ``invsr inspect``.

The record is a small JSON object (``schema`` 1): the ``invsr`` version, the preset, the schedule
(``timesteps``, ``steps``), ``seed``, ``posterior``, ``guidance``, ``tile``/``overlap``/``blend``, ``color_fix``,
the size rule (``scale``, or the one of ``width``/``height``/``fit``/``long_side``/``short_side`` that was asked
for), ``passes`` (model passes made), ``max_input_side`` (when set), ``dtype`` and ``models`` (the SD-Turbo and
noise-predictor identities: a Hub repo and commit, or a local file's or folder's SHA-256, never its path). It is stored as the
``invsr:record`` property of an XMP packet in the namespace :data:`NAMESPACE`, so every format carries it the
same way and standard tools show it (``exiftool -xmp-invsr:all``): PNG iTXt ``XML:com.adobe.xmp``, JPEG APP1,
WebP/AVIF/JPEG XL XMP boxes, TIFF tag 700. No timestamps or paths: the same settings give the same bytes.

Pure except :func:`read_provenance`, which reads a file through :func:`invsr_cli.imaging.decode.read_xmp`.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["NAMESPACE", "SCHEMA", "RECORD_KEYS", "provenance_record", "to_xmp", "from_xmp", "read_provenance"]

NAMESPACE = "https://invsr/ns/1.0/"
SCHEMA = 1
# Settings that decide an output's pixels, in the order they are shown.
RECORD_KEYS = ("preset", "timesteps", "steps", "seed", "posterior", "guidance", "tile", "overlap", "blend",
               "color_fix", "scale", "dtype", "vae_fp32")
_SIZE_RULES = ("width", "height", "fit", "long_side", "short_side")  # each replaces `scale` when given
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"


def provenance_record(settings: Mapping[str, Any], models: Mapping[str, Any] | None = None, *,
                      passes: int | None = None) -> dict[str, Any]:
    """The record for one output. ``settings``: ``Settings.to_dict()`` (the image's own settings, so ``auto``
    shows the preset it chose); ``passes``: the model passes this image's size took (default 1); ``models``: the
    model identities (e.g. repo, revision, file hash of each component; a local ``path`` is left out, so the same
    weights anywhere give the same bytes); without them the configured ``sd_model``/``noise_predictor`` names
    stand in (a local path by its last name only)."""
    from invsr_cli.base.version import __version__

    record: dict[str, Any] = {"schema": SCHEMA, "invsr": __version__}
    record.update({k: settings[k] for k in RECORD_KEYS if k in settings})
    rule = next((k for k in _SIZE_RULES if settings.get(k) is not None), None)
    if rule is not None:  # the size asked for, in place of the unused default scale
        record.pop("scale", None)
        record[rule] = settings[rule]
    record["passes"] = int(passes or 1)
    if settings.get("max_input_side") is not None:
        record["max_input_side"] = settings["max_input_side"]
    if "timesteps" in record:
        record["timesteps"] = [int(t) for t in record["timesteps"]]
    if models is not None:
        record["models"] = {name: _without_path(ident) for name, ident in models.items()}
    else:
        record["models"] = {k: _no_folder(settings.get(k)) for k in ("sd_model", "noise_predictor") if k in settings}
    json.dumps(record)  # fail here, not in an encoder thread, if something is not JSON-serialisable
    return record


def _without_path(identity: Any) -> Any:
    """A model identity without where it lies on this machine (the manifest keeps that): its content is enough."""
    if isinstance(identity, Mapping):
        return {k: v for k, v in identity.items() if k != "path"}
    return identity


def _no_folder(name: Any) -> Any:
    """A configured model name as recorded without an identity: a local path loses its folders."""
    return os.path.basename(os.path.normpath(name)) if isinstance(name, str) and (os.path.isabs(name) or os.path.exists(name)) else name


def to_xmp(record: Mapping[str, Any]) -> bytes:
    """An XMP packet holding ``record`` as JSON in ``invsr:record``. Pure ASCII (non-ASCII text is escaped in
    the JSON, ``begin=""`` means UTF-8), so it is also valid where a format allows only Latin-1 (OpenCV writes
    XMP in a PNG ``tEXt`` chunk)."""
    text = escape(json.dumps(dict(record), sort_keys=False, ensure_ascii=True, separators=(",", ":")))
    return (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        f' <rdf:RDF xmlns:rdf="{_RDF}">\n'
        f'  <rdf:Description rdf:about="" xmlns:invsr="{NAMESPACE}">\n'
        f"   <invsr:record>{text}</invsr:record>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    ).encode("ascii")


def from_xmp(xmp: bytes | str | None) -> dict[str, Any] | None:
    """The record in an XMP packet, or None when there is none (or it is not valid XML/JSON). Accepts the
    property as an element or, as XMP tools may rewrite simple properties, as an attribute."""
    if not xmp:
        return None
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    start, end = xmp.find(b"<x:xmpmeta"), xmp.rfind(b"</x:xmpmeta>")
    if start < 0 or end < 0:
        start, end = xmp.find(b"<rdf:RDF"), xmp.rfind(b"</rdf:RDF>")
        if start < 0 or end < 0:
            return None
        end += len(b"</rdf:RDF>")
    else:
        end += len(b"</x:xmpmeta>")
    try:
        root = ET.fromstring(xmp[start:end])  # expat: no external entities
    except ET.ParseError:
        return None
    tag = f"{{{NAMESPACE}}}record"
    for desc in root.iter(f"{{{_RDF}}}Description"):
        text = desc.get(tag)
        if text is None:
            el = desc.find(tag)
            text = el.text if el is not None else None
        if text:
            try:
                value = json.loads(text)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance record of an image file, or None when it has none. Raises
    :class:`~invsr_cli.base.errors.ImageReadError` for a missing or unreadable file."""
    from invsr_cli.imaging.decode import read_xmp

    return from_xmp(read_xmp(path))

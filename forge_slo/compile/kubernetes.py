"""Kubernetes object metadata the API server accepts: DNS-1123 names, label keys and values within their
grammar, and what sanitising changed kept as annotations, so nothing a spec says is lost.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

NAME_MAX = 63
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ANNOTATION_PREFIX = "forge-slo.dev/"
ORIGINAL_LABELS = ANNOTATION_PREFIX + "original-labels"
SERVICE = ANNOTATION_PREFIX + "service"


def is_dns_label(text: str) -> bool:
    return len(text) <= NAME_MAX and bool(_DNS_LABEL.match(text))


def is_label_value(text: str) -> bool:
    return len(text) <= NAME_MAX and bool(_LABEL_VALUE.match(text))


def is_label_key(text: str) -> bool:
    prefix, _, name = text.rpartition("/")
    if prefix and not all(is_dns_label(part) for part in prefix.split(".")):
        return False
    return len(name) <= NAME_MAX and bool(_LABEL_NAME.match(name))


def _suffix(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def dns_label(prefix: str, text: str) -> str:
    """``<prefix>-<text>`` as a DNS-1123 label; when ``text`` had to change, a short hash of it keeps two
    different texts from meeting in one name."""
    clean = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    name = f"{prefix}-{clean}" if clean else prefix
    if clean == text and len(name) <= NAME_MAX:
        return name
    tag = _suffix(text)
    return f"{name[:NAME_MAX - len(tag) - 1].rstrip('-')}-{tag}"


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 of [A-Za-z0-9._-], starting and ending with a letter or digit."""
    if is_label_value(text):
        return text
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    tag = _suffix(text)
    return f"{clean[:NAME_MAX - len(tag) - 1].rstrip('-._')}-{tag}".lstrip("-")


def label_key(text: str) -> str:
    """A Prometheus label name as a label key (Kubernetes keys start and end with a letter or digit)."""
    if is_label_key(text):
        return text
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return clean[:NAME_MAX].rstrip("-._") or f"label-{_suffix(text)}"


def metadata(prefix: str, service: str, labels: Mapping[str, str]) -> dict[str, object]:
    """An object's metadata: a valid name and labels, the service and any label sanitising changed kept as
    annotations."""
    clean = {label_key(k): label_value(v) for k, v in labels.items()}
    annotations = {SERVICE: service}
    if clean != dict(labels):
        annotations[ORIGINAL_LABELS] = json.dumps(dict(sorted(labels.items())), ensure_ascii=False,
                                                  separators=(",", ":"))
    return {"name": dns_label(prefix, service), "labels": dict(sorted(clean.items())), "annotations": annotations}

"""Node records checked before any job about them exists (jobs.actions calls these)."""

from django.core.exceptions import ValidationError

from toppcloud_site.records.models import Node


class InvalidNode(ValueError):
    pass


def validation_message(exc):
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


def get_node(name):
    try:
        return Node.objects.get(name=name)
    except Node.DoesNotExist:
        known = ", ".join(Node.objects.values_list("name", flat=True)[:20]) or "none yet"
        raise InvalidNode(f"there is no node {name!r} (known: {known})") from None


def check_node(node):
    """Refuse a node record that is not valid (edited in the database, say) before any job exists."""
    try:
        node.full_clean()
    except ValidationError as exc:
        raise InvalidNode(f"node {node.name!r} is not valid, no job was started: "
                          f"{validation_message(exc)}") from None


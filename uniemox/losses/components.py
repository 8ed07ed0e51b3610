"""Which loss terms a run optimises (ablations: any non-empty subset of the three)."""
from typing import FrozenSet, Iterable, Union

from uniemox.errors import UserError

# docs/method.md#losses names: L1 contrastive similarity, L2 similarity, L3 reconstruction.
LOSS_COMPONENTS = ("contrastive", "similarity", "reconstruction")
_ALIASES = {"l1": "contrastive", "l2": "similarity", "l3": "reconstruction"}


def parse_components(spec: Union[str, Iterable[str]]) -> FrozenSet[str]:
    """"all", "reconstruction,similarity", ["l1", "l3"] ... -> frozenset of component names."""
    if isinstance(spec, str):
        spec = LOSS_COMPONENTS if spec.strip() == "all" else spec.split(",")
    names = set()
    for raw in spec:
        name = _ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if name not in LOSS_COMPONENTS:
            raise UserError(f"unknown loss component {raw!r}; choose from {', '.join(LOSS_COMPONENTS)} "
                            f"(or l1/l2/l3, or 'all')")
        names.add(name)
    if not names:
        raise UserError("at least one loss component must be selected")
    return frozenset(names)

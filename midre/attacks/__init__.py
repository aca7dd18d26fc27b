"""Model-inversion attacks behind one interface (see base.py): registry ATTACKS, build_attack,
the Reconstructions artefact and the query oracle.

=============  ===========  ============  ==========================================
name           access       priors        paper
=============  ===========  ============  ==========================================
gmi            white-box    gan           Zhang et al. 2020
kedmi          white-box    kedmi         Chen et al. 2021
lomma_gmi      white-box    gan, lomma    Nguyen et al. 2023 (+ GMI)
lomma_kedmi    white-box    kedmi, lomma  Nguyen et al. 2023 (+ KedMI)
plgmi          white-box    cgan          Yuan et al. 2023
brepmi         label-only   gan           Kahla et al. 2022
ppa            white-box    stylegan2     Struppek et al. 2022
ifgmi          white-box    stylegan2     Qiu et al. 2024
mirror         black-box    stylegan2     An et al. 2022
mirror_wb      white-box    stylegan2     An et al. 2022 (white-box form)
rlbmi          black-box    gan           Han et al. 2023
vmi            white-box    gan           Wang et al. 2021
lokt           label-only   tacgan        Nguyen et al. 2023
c2fmi          black-box    stylegan2,    Ye et al. 2023
                            c2fmi
deepinversion  white-box    (none)        Yin et al. 2020
secretgen      white-box    secretgen     Yuan et al. 2022 (+ masked private images)
secretgen_bb   black-box    secretgen_bb  Yuan et al. 2022 (+ masked private images)
=============  ===========  ============  ==========================================
"""
from ..losses import logit_loss, max_margin_loss  # noqa: F401
from . import (  # noqa: F401,E402  (register the attacks)  # noqa: F401,E402  (high-resolution / black-box attacks)  # noqa: F401,E402  (issue 24)
                   brepmi,
                   c2fmi,  # noqa: F401,E402
                   deepinversion,
                   gmi,
                   ifgmi,
                   kedmi,
                   lokt,  # noqa: F401,E402
                   lomma,
                   mirror,
                   mirror_wb,
                   plgmi,
                   ppa,
                   rlbmi,
                   secretgen,  # noqa: F401,E402  (issue 24)
                   vmi,  # noqa: F401,E402
)
from .base import (  # noqa: F401
                   ACCESS_LEVELS,
                   ATTACKS,
                   AccessError,
                   Attack,
                   ChunkContext,
                   QueryOracle,
                   Reconstructions,
                   adaptive_eraser_from_meta,
                   build_attack,
)
from .brepmi import BREPMI  # noqa: F401,E402
from .c2fmi import C2FMI  # noqa: F401,E402
from .deepinversion import DeepInversion  # noqa: F401,E402
from .gmi import GMI  # noqa: F401,E402
from .ifgmi import IFGMI  # noqa: F401,E402
from .kedmi import KedMI  # noqa: F401,E402
from .lokt import LOKT  # noqa: F401,E402
from .lomma import LommaGMI, LommaKedMI  # noqa: F401,E402
from .mirror import MIRROR  # noqa: F401,E402
from .mirror_wb import MirrorWB  # noqa: F401,E402
from .plgmi import PLGMI  # noqa: F401,E402
from .ppa import PPA  # noqa: F401,E402
from .rlbmi import RLBMI  # noqa: F401,E402
from .secretgen import SecretGen, SecretGenBlackBox  # noqa: F401,E402
from .vmi import VMI  # noqa: F401,E402

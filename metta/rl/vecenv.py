"""The vectorizer lives beside the env, in ``metta.mettagrid.vecenv``. This name stays importable, as the same
module, for code written against upstream's layout (``from metta.rl.vecenv import make_vecenv``)."""

import sys

from metta.mettagrid import vecenv

sys.modules[__name__] = vecenv

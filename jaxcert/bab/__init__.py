"""Branch and bound over ReLU splits: the complete verification stage of :mod:`jaxcert.certify`.

One idea per module (importing this package imports no JAX; the modules that need it import it):

    options    the user's settings (:class:`BabOptions`), checked before any set-up work
    layout     the split vector of a domain: one int8 per ReLU neuron of the network, layer after layer
    bound      one jitted program bounding a fixed-size batch of domains (CROWN / alpha-CROWN under the
               splits, the branching choice, an attack from each domain's bound minimiser)
    branching  the BaBSR-style score of every unstable neuron of a domain
    attack     projected sign-gradient descent on the margin from given start points inside the box
    domains    the open domains of one example (host side): the worst ones first, each split in two
    search     the loop over one example: verified / falsified / unknown / timeout
"""

from jaxcert.bab.options import BabOptions, check_bab_options

__all__ = ["BabOptions", "check_bab_options"]

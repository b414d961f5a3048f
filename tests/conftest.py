import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("JAXCERT_HYPOTHESIS_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(run_dir, result)`` of the ``tiny`` config trained once per session (with its final evaluation)."""
    from jaxcert.train.configs import get_config, override
    from jaxcert.workflow import train

    run_dir = tmp_path_factory.mktemp("tiny_run") / "tiny"
    return run_dir, train(override(get_config("tiny"), out=str(run_dir)), progress=False)

"""The installed dependencies are the ones the project chose (scripts/setup.sh, docs/deploy.md)."""

import importlib.metadata
import pathlib

import pytest
import urllib3


def test_urllib3_is_urllib3_not_the_fork_grafana_client_brings() -> None:
    # urllib3-future's wheel copies itself over urllib3 at interpreter start (a .pth file); its
    # versions are 2.x.9xx. influxdb-client and collector/influx.py must run on urllib3 itself.
    assert int(urllib3.__version__.split(".")[2]) < 900, urllib3.__version__
    assert urllib3.__version__ == importlib.metadata.version("urllib3")
    site = pathlib.Path(urllib3.__file__).parents[1]
    assert not (site / "urllib3_future.pth").exists()


def test_grafana_client_works_beside_it() -> None:
    import niquests  # (imports urllib3_future under its own name)
    from grafana_client import GrafanaApi

    api = GrafanaApi.from_url("http://127.0.0.1:1", credential="x")
    assert api.client.url == "http://127.0.0.1:1/api"
    # A real request through niquests (urllib3_future): nothing listens on port 1, so it must
    # fail as a connection error, not with an import or attribute error of a clobbered urllib3.
    with pytest.raises(niquests.exceptions.ConnectionError):
        api.health.check()

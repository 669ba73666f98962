"""Shared fixtures for twin tests: the reference profile and scenario builders."""

from __future__ import annotations

import dataclasses

import pytest

from ecrl.twin.profile import Profile, builtin_profile_path, load_profile
from ecrl.twin.spec import ClusterSpec, DeploymentSpec


@pytest.fixture(scope="session")
def profile() -> Profile:
    return load_profile(builtin_profile_path("rtx3080-mobilenetv4"))


def cluster_with(**deployment: object) -> ClusterSpec:
    """The reference box with some Deployment fields changed."""
    return dataclasses.replace(
        ClusterSpec(), deployment=dataclasses.replace(DeploymentSpec(), **deployment)
    )

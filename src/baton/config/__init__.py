"""baton.yml: the meaning of every key, reading the file, and the ``baton check`` checklist.

A package of four modules, each owning one part: ``units`` (durations and percentages),
``models`` (every key's type, default and accepted values, and the README's defaults
table), ``loading`` (YAML in, a validated ``AppConfig`` or one ``ConfigError`` naming file,
key and expectation out) and ``checklist`` (the rules ``baton check`` applies). This module
only re-exports their public names, so ``from baton.config import X`` is the one way in.
"""

from __future__ import annotations

from baton.config.checklist import (
    EXPIRY_WARNING,
    CertificateFacts,
    CheckItem,
    HostFacts,
    ImageFacts,
    ProgramFacts,
    checklist,
    gather_host_facts,
    rules,
)
from baton.config.loading import (
    LoadedConfig,
    apply_overrides,
    config_hash,
    load_config,
    parse_config,
    read_yaml,
)
from baton.config.models import (
    ACME_DIRECTORIES,
    DOCKER_ONLY_RUN_KEYS,
    RETRY_ON_STABLE_DEFAULT,
    AcmeConfig,
    AppConfig,
    CanaryAnalysisConfig,
    CanaryConfig,
    CanaryStep,
    DeployConfig,
    Duration,
    HealthConfig,
    HooksConfig,
    MigrationsConfig,
    Percent,
    PositiveDuration,
    ProxyConfig,
    RunConfig,
    SignalsConfig,
    TlsConfig,
    defaults_table,
)
from baton.config.units import format_duration, format_percent, parse_duration, parse_percent

__all__ = [
    "ACME_DIRECTORIES",
    "DOCKER_ONLY_RUN_KEYS",
    "EXPIRY_WARNING",
    "RETRY_ON_STABLE_DEFAULT",
    "AcmeConfig",
    "AppConfig",
    "CanaryAnalysisConfig",
    "CanaryConfig",
    "CanaryStep",
    "CertificateFacts",
    "CheckItem",
    "DeployConfig",
    "Duration",
    "HealthConfig",
    "HooksConfig",
    "HostFacts",
    "ImageFacts",
    "LoadedConfig",
    "MigrationsConfig",
    "Percent",
    "PositiveDuration",
    "ProgramFacts",
    "ProxyConfig",
    "RunConfig",
    "SignalsConfig",
    "TlsConfig",
    "apply_overrides",
    "checklist",
    "config_hash",
    "defaults_table",
    "format_duration",
    "format_percent",
    "gather_host_facts",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_percent",
    "read_yaml",
    "rules",
]

"""Config: TOML + env overrides, one clear error naming the bad setting."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from router.config import ConfigError, Settings, SigningSettings

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "router.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    """Every config the repo ships (the README's, the Dockerfile's, the example) loads."""
    assert Settings.from_toml(path, env={}).endpoints


def test_shipped_configs_are_valid() -> None:
    docker = Settings.from_toml(ROOT / "configs/docker.toml", env={})
    assert docker.server.host == "0.0.0.0" and docker.server.port == 8080
    # the image's user (Dockerfile) can write there, not in /app/configs
    assert docker.store.state_file == Path("/home/router/router-data/state.json")
    local = Settings.from_toml(ROOT / "configs/local.toml", env={})
    assert local.store.backend == "memory"
    assert local.endpoints[0].name == "demo" and local.endpoints[0].spawn[0].count == 2
    example = Settings.from_toml(ROOT / "configs/router.example.toml", env={})
    assert example.endpoints[0].workers[0].url == "http://127.0.0.1:3001"


def test_defaults_without_file() -> None:
    s = Settings.from_toml(None, env={})
    assert (s.server.port, s.store.backend, s.signing.algorithm) == (8080, "memory", "rsa")


def test_env_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, "[server]\nport = 1\n")
    s = Settings.from_toml(
        p,
        env={
            "ROUTER_SERVER_PORT": "9000",
            "ROUTER_STORE_BACKEND": "redis",
            "ROUTER_STORE_REDIS_URL": "redis://10.0.0.1:6379/2",
            "ROUTER_SIGNING_KEY_FILES": "a.pem, b.pem",
            "ROUTER_API_KEY": "k",
            "ROUTER_ADMIN_KEY": "a",
            "ROUTER_WORKER_TOKEN": "w",
            "ROUTER_LOG_LEVEL": "debug",
            "UNRELATED": "x",
        },
    )
    assert s.server.port == 9000 and s.store.backend == "redis"
    assert s.store.redis_url == "redis://10.0.0.1:6379/2"
    assert [f.name for f in s.signing.key_files] == ["a.pem", "b.pem"]
    assert s.signing.key_files[0].parent == tmp_path  # relative to the config file
    by_name = {k.name: k for k in s.api_keys}
    assert by_name["env"].key_sha256 == hashlib.sha256(b"k").hexdigest()
    assert not by_name["env"].admin and not by_name["env"].register_workers
    assert by_name["env-admin"].admin and not by_name["env-admin"].register_workers
    assert by_name["env-workers"].register_workers and not by_name["env-workers"].admin
    assert by_name["env-workers"].key_sha256 == hashlib.sha256(b"w").hexdigest()
    assert s.log_level == "debug"


def test_secrets_are_not_in_repr(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        '[store]\nbackend="redis"\nredis_url="redis://:hunter2@h:6379/0"\n'
        '[[api_keys]]\nkey="sekrit"\n',
    )
    text = repr(Settings.from_toml(p, env={}))
    assert "hunter2" not in text and "sekrit" not in text
    assert hashlib.sha256(b"sekrit").hexdigest() not in text


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('[server]\nport = "x"', {}, "server.port: must be an integer"),
        ("[server]\nport = 70000", {}, "server.port: must be between"),
        (
            "",
            {"ROUTER_SERVER_PORT": "abc"},
            "ROUTER_SERVER_PORT (server.port): must be an integer, got 'abc'",
        ),
        ("", {"ROUTER_STORE_TIMEOUT_S": "-1"}, "ROUTER_STORE_TIMEOUT_S (store.timeout_s): must be"),
        ("", {"ROUTER_SERVER_PROT": "1"}, "ROUTER_SERVER_PROT (server.prot): unknown setting"),
        ("", {"ROUTER_LOG_LEVEL": "loud"}, "ROUTER_LOG_LEVEL (log_level): must be one of"),
        (
            '[store]\nbackend = "redis"',
            {"ROUTER_STORE_REDIS_URL": "http://x"},
            "ROUTER_STORE_REDIS_URL (store.redis_url): must start with redis://",
        ),
        ('[store]\nbackend = "mongo"', {}, "store.backend: must be one of memory, redis"),
        ('[store]\nbackend = "redis"\nredis_url = "http://x"', {}, "store.redis_url"),
        ('[signing]\nalgorithm = "dsa"', {}, "signing.algorithm: must be one of"),
        ('[[api_keys]]\nname = "a"', {}, "api_keys[0]: set exactly one of key or key_sha256"),
        ('[[api_keys]]\nkey_sha256 = "zz"', {}, "api_keys[0].key_sha256: must be 64 hex"),
        ('[[endpoints]]\nname = "route"', {}, "endpoints[0].name: 'route' is reserved"),
        ('[[endpoints]]\nname = "a b"', {}, "endpoints[0].name: must be"),
        (
            '[[endpoints]]\nname = "a"\npolicy = "fastest"',
            {},
            "endpoints[0].policy: must be one of",
        ),
        ('[[endpoints]]\nname = "a"\ndefault_cost = -1', {}, "endpoints[0].default_cost: must be"),
        ('[[endpoints]]\nname = "a"\n[[endpoints]]\nname = "a"', {}, "duplicate endpoint name"),
        (
            '[[endpoints]]\nname = "a"\n[[endpoints.workers]]\nurl = "ftp://x"',
            {},
            "endpoints[0].workers[0].url: must be an http(s) URL",
        ),
        (
            '[[endpoints]]\nname = "a"\n[[endpoints.workers]]\nurl = "http://bücher.example"',
            {},
            "endpoints[0].workers[0].url: must be printable ASCII",
        ),
        (
            '[[endpoints]]\nname = "a"\ndefault_cost = 1e16',
            {},
            "endpoints[0].default_cost: must be at most 2**53 - 1",
        ),
        (
            '[[endpoints]]\nname = "a"\n[endpoints.health]\ninterval_s = 0',
            {},
            "endpoints[0].health.interval_s: must be > 0",
        ),
        ('[[api_keys]]\nkey = "k"\nrate_per_s = 0', {}, "api_keys[0].rate_per_s: must be > 0"),
        ('[[api_keys]]\nkey = "k"\nburst = 5', {}, "api_keys[0].burst: needs rate_per_s"),
        (
            '[[api_keys]]\nkey = "k"\nrate_per_s = 1\nburst = 0.5',
            {},
            "api_keys[0].burst: must be >= 1",
        ),
        (
            '[[api_keys]]\nkey = "k"\nmax_concurrent = 0',
            {},
            "api_keys[0].max_concurrent: must be between 1",
        ),
        ("[server]\nprocesses = 2", {}, "server.processes: 2 processes need store.backend"),
        ("[server]\nprocesses = 0", {}, "server.processes: must be between 1 and 64"),
        (
            '[server]\nprocesses = 2\n[store]\nbackend = "redis"',
            {},
            "server.processes: several processes need signing.key_files",
        ),
        (
            '[[endpoints]]\nname = "a"\nserved_model_name = ""',
            {},
            "endpoints[0].served_model_name: must be a non-empty model name",
        ),
        ("[server]\nprot = 1", {}, "server.prot: unknown setting"),
        ("[server\n", {}, "invalid TOML"),
    ],
)
def test_bad_settings_name_themselves(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_toml(write(tmp_path, toml), env=env)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml"):
        Settings.from_toml(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize(
    ("algorithm", "threads", "cpus", "expected"),
    [
        ("rsa", None, 1, 0),  # one CPU: a thread hop only adds cost
        ("rsa", None, 2, 2),  # RSA releases the GIL: sign beside the loop
        ("rsa", None, 16, 4),  # capped: more threads than this only queue
        ("ed25519", None, 8, 0),  # cheaper than the hop to a thread
        ("ed25519", 3, 1, 3),  # an explicit setting wins
        ("rsa", 0, 8, 0),
    ],
)
def test_sign_threads(algorithm: str, threads: int | None, cpus: int, expected: int) -> None:
    s = SigningSettings(threads=threads)
    assert s.sign_threads(algorithm, cpus) == expected  # type: ignore[arg-type]


def test_signing_threads_from_toml_and_env(tmp_path: Path) -> None:
    p = tmp_path / "r.toml"
    p.write_text("[signing]\nthreads = 2\n")
    assert Settings.from_toml(p, env={}).signing.threads == 2
    assert Settings.from_toml(p, env={"ROUTER_SIGNING_THREADS": "0"}).signing.threads == 0
    assert Settings.from_toml(None, env={}).signing.threads is None
    p.write_text("[signing]\nthreads = -1\n")
    with pytest.raises(ConfigError, match=r"signing\.threads"):
        Settings.from_toml(p, env={})


def test_api_key_limits(tmp_path: Path) -> None:
    s = Settings.from_toml(
        write(
            tmp_path,
            '[[api_keys]]\nkey = "a"\nrate_per_s = 2.5\n'
            'max_concurrent = 4\n[[api_keys]]\nkey = "b"\n'
            'rate_per_s = 10\nburst = 40\n[[api_keys]]\nkey = "c"\n',
        ),
        env={},
    )
    a, b, c = s.api_keys
    assert (a.rate_per_s, a.bucket, a.max_concurrent, a.limited) == (2.5, 2.5, 4, True)
    assert (b.bucket, b.max_concurrent) == (40.0, None)
    assert not c.limited and c.rate_per_s is None


def test_store_state_file(tmp_path: Path) -> None:
    """Relative to the config file's directory, like key files; "" or absent: none."""
    cfg = write(tmp_path, '[store]\nstate_file = "var/state.json"\n')
    assert Settings.from_toml(cfg).store.state_file == tmp_path / "var" / "state.json"
    cfg = write(tmp_path, '[store]\nstate_file = ""\n')
    assert Settings.from_toml(cfg).store.state_file is None
    # on by default: in a data directory beside the config (the working directory without one)
    assert Settings.from_toml(None, {}).store.state_file == Path.cwd() / ".router-data/state.json"
    cfg = write(tmp_path, "[store]\n")
    assert Settings.from_toml(cfg).store.state_file == tmp_path / ".router-data/state.json"
    env = {"ROUTER_STORE_STATE_FILE": str(tmp_path / "s.json")}
    assert Settings.from_toml(None, env).store.state_file == tmp_path / "s.json"
    with pytest.raises(ConfigError, match=r"store\.state_file: must be a string"):
        Settings.from_toml(write(tmp_path, "[store]\nstate_file = 1\n"))


def test_cache_aware_and_perf_mode_settings(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        '[[endpoints]]\nname = "llm"\npolicy = "cache_aware"\nperf_mode = "measured"\n'
        "[endpoints.cache_aware]\nbalance_abs_s = 2.5\nbalance_rel = 2\nttl_s = 60\n"
        "max_blocks_per_worker = 100\n"
        "[endpoints.local]\nkv_cache_tokens = 4096\nprefill_tokens_per_s = 5000\n"
    )
    ep = Settings.from_toml(path, env={}).endpoints[0]
    assert ep.policy == "cache_aware" and ep.perf_mode == "measured"
    assert (ep.cache_aware.balance_abs_s, ep.cache_aware.balance_rel) == (2.5, 2.0)
    assert (ep.cache_aware.ttl_s, ep.cache_aware.max_blocks_per_worker) == (60.0, 100)
    assert ep.local is not None and ep.local.kv_cache_tokens == 4096
    assert ep.local.prefill_tokens_per_s == 5000.0 and ep.local.block_chars is None
    for bad, where in (
        ("balance_rel = 0.5", "endpoints[0].cache_aware.balance_rel"),
        ("max_blocks_per_worker = 0", "endpoints[0].cache_aware.max_blocks_per_worker"),
        ("speed = 1", "endpoints[0].cache_aware.speed"),
    ):
        path.write_text(f'[[endpoints]]\nname = "llm"\n[endpoints.cache_aware]\n{bad}\n')
        with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
            Settings.from_toml(path, env={})
    path.write_text('[[endpoints]]\nname = "llm"\nperf_mode = "guessed"\n')
    with pytest.raises(ConfigError, match="perf_mode"):
        Settings.from_toml(path, env={})

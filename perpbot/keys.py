"""The encrypted key file: venue API credentials at rest, and `perpbot keys`.

    perpbot keys add VENUE [--config C] [--file F] [--from-env]
    perpbot keys list [--config C] [--file F]
    perpbot keys remove VENUE [--config C] [--file F]

`add` asks for the credential fields the venue's ccxt id needs (apiKey,
secret and, for OKX and Bitget, password; walletAddress and privateKey for
Hyperliquid and Paradex; ...) without echoing them, or with `--from-env`
reads them from the environment variables the config's venue names (for
scripts; needs `--config`). With `--config`, VENUE is one of its venues;
without, a ccxt id perpbot trades (binanceusdm, okx, ...). `list` prints the
venues and which fields each holds, never a value. `remove` deletes a venue.

The file is `--file`, else the config's `run.keys_file`, else
`~/.config/perpbot/keys.enc`. Its passphrase is asked for on the terminal
(twice when the file is created), or taken from `$PERPBOT_KEYS_PASSPHRASE`
when that is set (scripts, and every run that reads the file). Errors are one
line on stderr and exit code 2.

File format (one JSON object, UTF-8):

    {"header": {"format": "perpbot-keys", "version": 1,
                "kdf": {"name": "scrypt", "n": 65536, "r": 8, "p": 1, "salt": "<base64, 16 bytes>"},
                "cipher": {"name": "aes-256-gcm", "nonce": "<base64, 12 bytes>"}},
     "ciphertext": "<base64>"}

The key is scrypt(passphrase) with the header's parameters; the ciphertext is
AES-256-GCM of `{"venues": {VENUE: {FIELD: VALUE}}}` with the header (as
canonical JSON) as associated data, so changing any byte of the header or of
the ciphertext makes decryption fail. Every write draws a fresh salt and
nonce and replaces the file atomically (a temporary file in the same
directory, then rename) with mode 0600; a new directory is created 0700. A
file that group or others may access is refused.

At start-up (modes readonly and live) with `run.keys_file` set, the file is
decrypted once with `$PERPBOT_KEYS_PASSPHRASE` (`stored_credentials`); each
credential field then comes from the environment variable the venue names
when it is set and non-empty, else from the key file. Every value read from
the file, and the passphrase, is redacted from the logs.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import json
import os
import sys
import unicodedata
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perpbot.errors import ConfigError, PerpBotError

if TYPE_CHECKING:
    from perpbot.config import Config

#: where the key file is when neither --file nor run.keys_file says otherwise (`~` is the user's home)
DEFAULT_KEYS_FILE = "~/.config/perpbot/keys.enc"
#: the environment variable holding the key file's passphrase, for anything not run at a terminal
PASSPHRASE_ENV = "PERPBOT_KEYS_PASSPHRASE"
#: every ccxt credential field a venue may need
CREDENTIAL_FIELDS = ("apiKey", "secret", "password", "walletAddress", "privateKey")

FORMAT = "perpbot-keys"
VERSION = 1
CIPHER = "aes-256-gcm"
#: scrypt cost written into new files: 64 MiB of memory, a fraction of a second per derivation
SCRYPT_N = 2**16
SCRYPT_R = 8
SCRYPT_P = 1
#: what a file's header may ask of scrypt (a tampered header must not exhaust the machine)
_MAX_N = 2**20
_MAX_MEMORY = 1 << 30
SALT_BYTES = 16
NONCE_BYTES = 12
KEY_BYTES = 32


class KeyFileError(PerpBotError):
    """The key file cannot be used: missing, unsafe permissions, wrong passphrase, damaged."""


def default_keys_file() -> Path:
    """`~/.config/perpbot/keys.enc` of the current user."""
    return Path(os.path.expanduser(DEFAULT_KEYS_FILE))


def keys_file_path(value: str | os.PathLike[str] | None) -> Path:
    """The key file a setting names (`~` expanded), or the default one for None."""
    return Path(os.path.expanduser(os.fspath(value))) if value else default_keys_file()


# --------------------------------------------------------------------------- the file


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, size: int | None, path: Path) -> bytes:
    try:
        if not isinstance(text, str):
            raise ValueError
        data = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise KeyFileError(f"damaged file: {path}: its {what} is not base64") from None
    if size is not None and len(data) != size:
        raise KeyFileError(f"damaged file: {path}: its {what} is {len(data)} bytes, not {size}")
    return data


def _canonical(header: Mapping[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if not passphrase:
        raise KeyFileError("the passphrase is empty")
    secret = unicodedata.normalize("NFC", passphrase).encode()
    return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(secret)


def check_file_mode(path: Path) -> os.stat_result:
    """Refuse a key file that is missing, not a regular file, or open to group or others."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"no key file {path}: create it with `perpbot keys add VENUE`") from None
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    if not os.path.isfile(path):
        raise KeyFileError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(f"key file {path} is accessible by group or others (mode "
                           f"{st.st_mode & 0o777:04o}): run `chmod 600 {path}`")
    return st


def _parse_header(doc: Any, path: Path) -> tuple[dict[str, Any], bytes, bytes, tuple[int, int, int], bytes]:
    """(header, salt, nonce, (n, r, p), ciphertext) of a parsed file; KeyFileError for anything unexpected."""
    if not isinstance(doc, dict) or set(doc) != {"header", "ciphertext"} or not isinstance(doc["header"], dict):
        raise KeyFileError(f"damaged file: {path}: not a perpbot key file")
    header = doc["header"]
    kdf, cipher = header.get("kdf"), header.get("cipher")
    if header.get("format") != FORMAT or not isinstance(kdf, dict) or not isinstance(cipher, dict):
        raise KeyFileError(f"damaged file: {path}: not a perpbot key file")
    if header.get("version") != VERSION:
        raise KeyFileError(f"key file {path} has format version {header.get('version')!r}; this perpbot reads "
                           f"version {VERSION}")
    if set(header) != {"format", "version", "kdf", "cipher"} or set(kdf) != {"name", "n", "r", "p", "salt"} \
            or set(cipher) != {"name", "nonce"} or kdf["name"] != "scrypt" or cipher["name"] != CIPHER:
        raise KeyFileError(f"damaged file: {path}: unexpected header")
    n, r, p = kdf["n"], kdf["r"], kdf["p"]
    if not all(type(x) is int for x in (n, r, p)) or not (2 <= n <= _MAX_N and n & (n - 1) == 0) \
            or not (1 <= r <= 32 and 1 <= p <= 16) or 128 * n * r > _MAX_MEMORY:
        raise KeyFileError(f"damaged file: {path}: scrypt parameters out of range")
    salt = _unb64(kdf["salt"], "salt", SALT_BYTES, path)
    nonce = _unb64(cipher["nonce"], "nonce", NONCE_BYTES, path)
    ciphertext = _unb64(doc["ciphertext"], "ciphertext", None, path)
    return header, salt, nonce, (n, r, p), ciphertext


def read_keys(path: str | os.PathLike[str], passphrase: str) -> dict[str, dict[str, str]]:
    """Venue -> {credential field: value} from the key file at `path`.

    Raises KeyFileError: no file, permissions open to group or others, not a
    key file, or `wrong passphrase or damaged file: <path>` when the
    authenticated decryption fails.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    p = Path(path)
    check_file_mode(p)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read key file {p}: {e.strerror}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"damaged file: {p}: not a perpbot key file") from None
    header, salt, nonce, (n, r, pp), ciphertext = _parse_header(doc, p)
    key = _derive(passphrase, salt, n, r, pp)
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext, _canonical(header))
    except InvalidTag:
        raise KeyFileError(f"wrong passphrase or damaged file: {p}") from None
    try:
        content = json.loads(plain)
    except (ValueError, UnicodeDecodeError):
        content = None
    venues = content.get("venues") if isinstance(content, dict) else None
    if not isinstance(venues, dict) or not all(
            isinstance(name, str) and isinstance(fields, dict)
            and all(f in CREDENTIAL_FIELDS and isinstance(v, str) for f, v in fields.items())
            for name, fields in venues.items()):
        raise KeyFileError(f"damaged file: {p}: the decrypted content is not a venue key map")
    return {name: dict(fields) for name, fields in venues.items()}


def write_keys(path: str | os.PathLike[str], passphrase: str, venues: Mapping[str, Mapping[str, str]], *,
               n: int | None = None, r: int | None = None, p: int | None = None) -> None:
    """Encrypt `venues` (venue -> {field: value}) into `path` with a fresh salt and nonce.

    `n`, `r`, `p`: scrypt's cost, by default `SCRYPT_N`, `SCRYPT_R`, `SCRYPT_P`.

    The file is written beside its final name and renamed over it, mode 0600,
    so a failure at any point leaves the previous file as it was. A missing
    directory is created with mode 0700.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    target = Path(path)
    n, r, p = n or SCRYPT_N, r or SCRYPT_R, p or SCRYPT_P
    for name, fields in venues.items():
        bad = [f for f in fields if f not in CREDENTIAL_FIELDS]
        if bad:
            raise KeyFileError(f"venue {name}: unknown credential field {bad[0]!r}; allowed: "
                               f"{', '.join(CREDENTIAL_FIELDS)}")
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    header = {"format": FORMAT, "version": VERSION,
              "kdf": {"name": "scrypt", "n": n, "r": r, "p": p, "salt": _b64(salt)},
              "cipher": {"name": CIPHER, "nonce": _b64(nonce)}}
    plain = json.dumps({"venues": {k: dict(v) for k, v in venues.items()}}).encode()
    ciphertext = AESGCM(_derive(passphrase, salt, n, r, p)).encrypt(nonce, plain, _canonical(header))
    body = json.dumps({"header": header, "ciphertext": _b64(ciphertext)}, indent=1).encode() + b"\n"
    directory = target.parent
    try:
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
            os.chmod(directory, 0o700)  # mkdir's mode is reduced by the umask
        elif directory == default_keys_file().parent:
            os.chmod(directory, 0o700)  # our own directory: nobody else lists it
    except OSError as e:
        raise KeyFileError(f"cannot create the directory of {target}: {e.strerror}") from None
    tmp = directory / f".{target.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise KeyFileError(f"cannot write key file {target} (left as it was): {e.strerror or e}") from None
    try:  # the rename itself survives a crash once the directory is synced
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# --------------------------------------------------------------------------- start-up


def stored_credentials(cfg: Config, environ: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Venue -> {field: value} from the config's `run.keys_file` ({} when it is not set).

    Decrypted with `$PERPBOT_KEYS_PASSPHRASE`; the passphrase and every value
    read are added to this process's log redaction. KeyFileError when the
    passphrase is missing or the file cannot be decrypted.
    """
    if cfg.run.keys_file is None:
        return {}
    from perpbot import logs

    env = os.environ if environ is None else environ
    path = keys_file_path(cfg.run.keys_file)
    passphrase = env.get(PASSPHRASE_ENV, "")
    if not passphrase:
        raise KeyFileError(f"run.keys_file is {path}: set ${PASSPHRASE_ENV} to its passphrase")
    logs.add_secrets([passphrase])
    venues = read_keys(path, passphrase)
    logs.add_secrets(v for fields in venues.values() for v in fields.values())
    return venues


# --------------------------------------------------------------------------- perpbot keys


def _venue_fields(venue: str, cfg: Config | None) -> tuple[tuple[str, ...], dict[str, str]]:
    """(credential fields the venue needs, field -> environment variable NAME from the config)."""
    from perpbot.config import ccxt_id_of
    from perpbot.exec.venues.ccxt_venue import QUIRKS, credential_env_names

    if cfg is None:
        if venue not in QUIRKS:
            raise KeyFileError(f"unknown venue {venue!r}: name a ccxt id perpbot trades ({', '.join(sorted(QUIRKS))}) "
                               "or give --config and one of its venues")
        return QUIRKS[venue].credentials, {}
    if venue not in cfg.venues:
        raise KeyFileError(f"no venue {venue!r} in the config; its venues: {', '.join(cfg.venues)}")
    v = cfg.venues[venue]
    ccxt_id = ccxt_id_of(v.ccxt_id, v.feed)
    if ccxt_id not in QUIRKS:
        raise KeyFileError(f"venue {venue} trades through ccxt id {ccxt_id!r}, which perpbot does not trade; "
                           f"allowed: {', '.join(sorted(QUIRKS))}")
    return QUIRKS[ccxt_id].credentials, credential_env_names(ccxt_id, v.api_key_env, v.api_secret_env)


def _passphrase(path: Path, *, new: bool) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value is not None:
        if not value:
            raise KeyFileError(f"${PASSPHRASE_ENV} is set but empty")
        return value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", getpass.GetPassWarning)
        first = getpass.getpass(f"Passphrase for {path}: ")
        if not first:
            raise KeyFileError("an empty passphrase protects nothing; nothing written")
        if new and getpass.getpass("The same passphrase again: ") != first:
            raise KeyFileError("the two passphrases differ; nothing written")
    return first


def _ask(prompt: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", getpass.GetPassWarning)
        return getpass.getpass(prompt)


def _credentials(venue: str, fields: Iterable[str], env_names: Mapping[str, str], from_env: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for field in fields:
        if from_env:
            name = env_names.get(field)
            if name is None:
                raise KeyFileError(f"venue {venue} names no environment variable for its {field} "
                                   "(api_key_env / api_secret_env in the config)")
            value = os.environ.get(name, "")
            if not value:
                raise KeyFileError(f"${name} (venue {venue}, {field}) is unset or empty; nothing written")
        else:
            value = _ask(f"{venue} {field}: ").strip()
            if not value:
                raise KeyFileError(f"empty {field}; nothing written")
        out[field] = value
    return out


def _resolve(args: argparse.Namespace) -> tuple[Path, Config | None]:
    cfg: Config | None = None
    if args.config is not None:
        from perpbot.config import load_config

        cfg = load_config(args.config)
    if args.file is not None:
        return keys_file_path(args.file), cfg
    return keys_file_path(cfg.run.keys_file if cfg is not None else None), cfg


def _add(args: argparse.Namespace, out: Any) -> int:
    path, cfg = _resolve(args)
    if args.from_env and cfg is None:
        raise KeyFileError("--from-env needs --config: the config names the environment variables")
    fields, env_names = _venue_fields(args.venue, cfg)
    new = not os.path.lexists(path)
    if not new:
        check_file_mode(path)
    passphrase = _passphrase(path, new=new)
    venues = {} if new else read_keys(path, passphrase)
    replaced = args.venue in venues
    venues[args.venue] = _credentials(args.venue, fields, env_names, args.from_env)
    write_keys(path, passphrase, venues)
    print(f"{'replaced' if replaced else 'added'} {args.venue} "
          f"({', '.join(fields)}) in {path}", file=out)
    return 0


def _list(args: argparse.Namespace, out: Any) -> int:
    path, cfg = _resolve(args)
    check_file_mode(path)
    venues = read_keys(path, _passphrase(path, new=False))
    if not venues:
        print(f"no venues in {path}", file=out)
    for name in sorted(venues):
        line = f"{name}: {', '.join(f for f in CREDENTIAL_FIELDS if f in venues[name])}"
        if cfg is not None and name in cfg.venues:
            missing = [f for f in _venue_fields(name, cfg)[0] if f not in venues[name]]
            if missing:
                line += f" (missing {', '.join(missing)})"
        print(line, file=out)
    return 0


def _remove(args: argparse.Namespace, out: Any) -> int:
    path, _ = _resolve(args)
    check_file_mode(path)
    passphrase = _passphrase(path, new=False)
    venues = read_keys(path, passphrase)
    if args.venue not in venues:
        raise KeyFileError(f"no venue {args.venue!r} in {path}; it holds: {', '.join(sorted(venues)) or 'none'}")
    del venues[args.venue]
    write_keys(path, passphrase, venues)
    print(f"removed {args.venue} from {path}", file=out)
    return 0


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add `keys` and its actions to a `perpbot` sub-command parser set."""
    p: argparse.ArgumentParser = commands.add_parser(
        "keys", help="manage the encrypted key file of venue API credentials",
        description="Manage the encrypted key file of venue API credentials. The passphrase is asked for "
                    f"on the terminal, or read from ${PASSPHRASE_ENV} when set (scripts).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", type=Path, default=None,
                        help=f"key file (default: the config's run.keys_file, else {DEFAULT_KEYS_FILE})")
    common.add_argument("--config", type=Path, default=None,
                        help="config file: VENUE is one of its venues, and its run.keys_file is the default file")
    add = actions.add_parser("add", parents=[common], help="add or replace a venue's credentials",
                             description="Add or replace a venue's credentials; the fields the venue needs are "
                                         "asked for without echo.")
    add.add_argument("venue", metavar="VENUE")
    add.add_argument("--from-env", action="store_true",
                     help="read the fields from the environment variables the config's venue names (needs --config)")
    actions.add_parser("list", parents=[common], help="list the venues and which fields they hold (no values)")
    rm = actions.add_parser("remove", parents=[common], help="remove a venue's credentials")
    rm.add_argument("venue", metavar="VENUE")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, out: Any = None) -> int:
    """Carry out a parsed `perpbot keys` command; every failure is one line on stderr and exit code 2."""
    out = sys.stdout if out is None else out
    try:
        return {"add": _add, "list": _list, "remove": _remove}[args.action](args, out)
    except (KeyFileError, ConfigError) as e:
        print(f"perpbot keys: {e}", file=sys.stderr)
    except (KeyboardInterrupt, EOFError):
        print("perpbot keys: cancelled; nothing written", file=sys.stderr)
    return 2

"""A faithful emulator of ``sbctl`` (Foxboron/sbctl) for the lab fleet.

sbctl cannot be installed here and there is no UEFI firmware, so lab hosts get
this program as ``/usr/local/sbin/sbctl`` (see :func:`install_on_lab_host`:
the package and its certificates are copied into the host's private
``/usr/local/sbin/sbctl.d/`` and run by the host's ``/usr/bin/python3``, since
lab hosts cannot see the controller's virtualenv or checkout).  It keeps the
real key layout, flags, messages, JSON shapes and exit codes; only the
firmware (efivarfs) is replaced by a JSON file, and Authenticode signing is
done with the real ``sbsign``/``sbverify`` (sbsigntool) instead of go-uefi.

Run it as ``python -m infratool_lab.sbctl <args>``.

Modules, one job each (leaf first): :mod:`.consts` (upstream constants and
messages), :mod:`.output` (error kinds, logging.go), :mod:`.encoding` (files,
PEM), :mod:`.firmware` (the emulated firmware and signature lists),
:mod:`.context` (paths, config, keys of one command), :mod:`.pe` (PE images,
sbsign/sbverify), :mod:`.cmd_keys` / :mod:`.enroll` / :mod:`.cmd_files` (the
commands), :mod:`.flags` and :mod:`.cli` (cobra/pflag, ``main``),
:mod:`.install` (wrappers and lab-host installation).  Inside the package
imports are relative, so the copy on a lab host runs without ``infratool``.

Paths
-----
Like real sbctl (``config.DefaultConfig``): keys in
``/var/lib/sbctl/keys/{PK,KEK,db}/{PK,KEK,db}.{key,pem}``, the owner GUID in
``/var/lib/sbctl/GUID``, the signed-files database in
``/var/lib/sbctl/files.json`` (``files.db`` only with the legacy layout).
``/etc/sbctl/sbctl.conf`` and ``--config`` (YAML: ``keydir``, ``guid``,
``files_db``, ``db_additions``) are honoured.

Builds: what a build bakes in with ``-ldflags -X`` comes from
``SBCTL_EMULATOR_VERSION`` (sbctl.Version, default 0.18) and
``SBCTL_EMULATOR_DATABASE_PATH`` (sbctl.DatabasePath: upstream
``/usr/share/secureboot/``, nixpkgs ``/etc/secureboot``; see
:data:`UPSTREAM`, :data:`NIXPKGS`).  When DatabasePath exists and
sbctl.conf does not, sbctl uses the legacy layout there and prints "old
configuration detected" on stderr on every run, even with ``--json``.
Before 0.15 DatabasePath is the only layout (no notice, no ``setup``, no
``version``); before 0.17 ``--microsoft`` enrolls only the three 2011
certificates.

The emulated firmware lives in ``/var/lib/sbctl-emulator/firmware.json``
(override with ``SBCTL_EMULATOR_FIRMWARE``; see :class:`FirmwareState` for
its fields).  A missing file means a common PC whose PK was cleared to enter
Setup Mode: KEK and db still hold the OEM's and Microsoft's 2011
certificates, and their efivarfs files are immutable (the kernel's rule), so
``enroll-keys`` without ``-i`` stops; a TPM event log without option ROMs;
the ESP at ``/boot``.

``SBCTL_EMULATOR_ROOT`` prefixes every path sbctl itself knows (its key
directory, GUID, files database, config files, efivarfs paths, the firmware
file and the state file's ``esp``), like a chroot; tests use it to run
without a lab host.  Paths the *user* gives (command-line arguments,
``--config``, ``--export``, ``ESP_PATH``/``SYSTEMD_ESP_PATH``) are used as
given.  Messages show paths as sbctl would see them (without the prefix).

ESP: real sbctl honours ``SYSTEMD_ESP_PATH``/``ESP_PATH`` and otherwise asks
``lsblk`` for a vfat GPT partition of type ESP mounted at /efi, /boot or
/boot/efi; the emulator honours the same variables and otherwise reads
``esp`` from the firmware file (``null`` or a directory that does not exist
= "failed to find EFI system partition", as when lsblk finds no mounted ESP).

Confirmed upstream (Foxboron/sbctl at commit 1b913e78, March 2026, after
release 0.18; spf13/cobra v1.8.1 and spf13/pflag v1.0.5 as pinned in its
go.mod; Foxboron/go-uefi d29549a4):

* cmd/sbctl/main.go: global flags ``--json --quiet --disable-landlock --debug
  --config``; every error exits 1; ``--json`` turns *all* logging off (errors
  too) and prints ``json.MarshalIndent(v, "", "  ")``; unknown flags print
  pflag's message and the command's usage to stderr (cobra ``SilenceErrors``,
  so no "Error:" prefix); unknown commands print cobra's
  ``unknown command "x" for "sbctl"`` (with suggestions) on stdout; the
  Setup-Mode and option-ROM messages below are copied verbatim.
* logging/logging.go: ✓/✗/‼ symbols (``[+]``/``[-]``/``[!]`` with
  ``SBCTL_UNICODE=0``), colour only on a terminal (fatih/color), ``Warn`` and
  ``Error`` on stderr, everything else on stdout, ``--quiet`` mutes stdout.
* status.go: JSON ``{"installed", "guid", "setup_mode", "secure_boot",
  "vendors", "firmware_quirks"}``; installed = the key directory exists;
  vendors = owners of db entries with a known vendor GUID (certs/certs.go:
  microsoft 77fa9abd-…, custom 88a69775-…, tpm-eventlog) plus
  ``builtin-<var>`` (certs/builtin.go); quirks are ``{id, name, link,
  severity, method}`` (quirks/quirks.go).  No UEFI: "system is not booted
  with UEFI".
* create-keys.go, backend/file.go, keys.go: RSA 4096, SHA256WithRSA,
  self-signed, serial < 2^128, valid 5 years, subject CN only ("Platform
  Key", "Key Exchange Key", "Database Key"), key PKCS#8 PEM, files mode 0400
  (not 0600), GUID file 0644 (uuid4 text, no newline); existing keys
  (keydir/PK, KEK, db present) are kept: "Secure boot keys have already been
  created!".
* enroll-keys.go: flags ``-m/--microsoft -t/--tpm-eventlog -c/--custom
  -f/--firmware-builtin[=db,KEK] --yes-this-might-brick-my-machine`` (hidden
  alias ``--yolo``) ``-i/--ignore-immutable --export [esl,auth]
  -p/--partial [PK,KEK,db] --custom-bytes -a/--append``; outside Setup Mode
  (unless --partial/--export) "Your system is not in Setup Mode! ...";
  without --microsoft/--tpm-eventlog/--yolo/--append it reads the TPM event
  log and refuses when it is missing or shows an option ROM
  (EV_EFI_BOOT_SERVICES_DRIVER); enrolls db, KEK, then PK (db signed by KEK,
  KEK and PK by PK); --export writes {db,KEK,PK}.{esl,auth} to the current
  directory.
* sign.go, sbctl.go, keys.go: ``-s/--save -o/--output``; already signed by
  our db key and unchanged → "File has already been signed <out>";
  database entries ``{"file", "output_file"}`` (database.go, a JSON map keyed
  by file, indented with 4 spaces).
* verify.go: JSON ``[{"file_name", "is_signed"}]`` with is_signed 1 signed,
  0 unsigned, -1 missing (``null`` when nothing was checked); files in the
  database first, then every MZ file on the ESP; an ESP_PATH that does not
  exist makes upstream dereference afero.Walk's nil FileInfo (a Go panic,
  exit 2), which the emulator reproduces.
* list-files.go: JSON ``[{"file", "output_file", "is_signed"}]`` where
  is_signed is a *bool* here.
* reset.go: clears PK (``-p/--partial`` clears KEK or db,
  ``-c/--cert-files`` removes single certs); needs our keys, since the
  update is signed.
* util.go CheckImmutable: "File is immutable: <efivar>" (stderr) per
  existing immutable PK/KEK/db file, then main.go prints "You need to chattr
  -i files in efivarfs" (stdout), exit 1; with ``-i`` go-uefi's efivarfs
  (``UnsetImmutable()``) clears the flag of each file it writes.
* list-enrolled-keys.go: text, and ``--json`` as Go marshals
  ``map[string][]*x509.Certificate`` (keys DB, KEK, PK; ``null`` when
  empty; see :mod:`.gocert` for the fields written).
* setup.go: ``--migrate`` (:mod:`.cmd_setup`); the other setup flags exit 1
  with "not emulated".
* sign-all.go, remove-file.go, version.go are emulated too; the
  bundle/import/export/rotate commands exit 1 with "not emulated".

Approximations (documented, no upstream text to copy): firmware write
refusals are reported as the kernel's EACCES ("write <efivar>: permission
denied"); go-uefi's PE parse errors are approximated; the event log is the
firmware file's ``tpm_eventlog``/``option_roms``; SecureBoot only changes on
:func:`simulate_reboot`.
"""

from .cli import main
from .firmware import (
    FirmwareState,
    SignatureEntry,
    firmware_state_path,
    read_firmware_state,
    simulate_reboot,
    write_firmware_state,
)
from .install import (
    LAB_FIRMWARE_FILE,
    LAB_SBCTL_HOSTS,
    NIXPKGS,
    UPSTREAM,
    SbctlBuild,
    etc_secureboot,
    install,
    install_on_lab_host,
    install_tree,
    provision_lab,
    set_lab_firmware,
)

__all__ = [
    "LAB_FIRMWARE_FILE",
    "LAB_SBCTL_HOSTS",
    "NIXPKGS",
    "UPSTREAM",
    "FirmwareState",
    "SbctlBuild",
    "SignatureEntry",
    "etc_secureboot",
    "firmware_state_path",
    "install",
    "install_on_lab_host",
    "install_tree",
    "main",
    "provision_lab",
    "read_firmware_state",
    "set_lab_firmware",
    "simulate_reboot",
    "write_firmware_state",
]

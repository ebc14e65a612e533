# The option types of the lab's module system (see lib.nix), with the names,
# descriptions and merge rules of nixpkgs' lib/types.nix, written anew.
lib:
let
  inherit (builtins)
    all
    concatLists
    concatMap
    concatStringsSep
    elem
    filter
    foldl'
    head
    isAttrs
    isBool
    isFloat
    isFunction
    isInt
    isList
    isPath
    isString
    length
    mapAttrs
    tail
    ;
  inherit (lib)
    evalModules
    filterAttrs
    hasPrefix
    isDerivation
    isStringLike
    last
    mergeDefinitions
    mergeEqualOption
    mergeOneOption
    mkOptionType
    showDefs
    showLoc
    showValue
    zipDefLists
    ;
in
rec {
    unspecified = mkOptionType { name = "unspecified"; };
    anything = mkOptionType {
      name = "anything";
      merge =
        loc: defs:
        if all (d: isAttrs d.value && !(isDerivation d.value)) defs then
          (attrsOf anything).merge loc defs
        else if all (d: isList d.value) defs then
          concatMap (d: d.value) defs
        else
          mergeEqualOption loc defs;
    };
    raw = mkOptionType {
      name = "raw";
      merge = mergeOneOption;
    };
    bool = mkOptionType {
      name = "bool";
      description = "boolean";
      check = isBool;
    };
    str = mkOptionType {
      name = "str";
      description = "string";
      check = isString;
    };
    singleLineStr = mkOptionType {
      name = "singleLineStr";
      description = "(optionally newline-terminated) single-line string";
      check = s: isString s && builtins.match "[^\n]*\n?" s != null;
    };
    separatedString =
      sep:
      mkOptionType {
        name = "separatedString";
        description = if sep == "\n" then "strings concatenated with \"\\n\"" else "string";
        check = isString;
        merge = _: defs: concatStringsSep sep (map (d: d.value) defs);
      };
    lines = separatedString "\n" // {
      name = "lines";
    };
    commas = separatedString ",";
    int = mkOptionType {
      name = "int";
      description = "signed integer";
      check = isInt;
    };
    float = mkOptionType {
      name = "float";
      description = "floating point number";
      check = isFloat;
    };
    intBetween =
      lo: hi:
      mkOptionType {
        name = "intBetween";
        description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
        check = x: isInt x && x >= lo && x <= hi;
      };
    ints = {
      unsigned = mkOptionType {
        name = "unsignedInt";
        description = "unsigned integer, meaning >=0";
        check = x: isInt x && x >= 0;
      };
      positive = mkOptionType {
        name = "positiveInt";
        description = "positive integer, meaning >0";
        check = x: isInt x && x > 0;
      };
      u16 = intBetween 0 65535;
      between = intBetween;
    };
    numbers = {
      positive = mkOptionType {
        name = "positive";
        description = "positive integer or floating point number, meaning >0";
        check = x: (isInt x || isFloat x) && x > 0;
      };
    };
    port = ints.u16 // {
      name = "port";
      description = "16 bit unsigned integer; between 0 and 65535 (both inclusive)";
    };
    path = mkOptionType {
      name = "path";
      description = "absolute path";
      check = x: isStringLike x && hasPrefix "/" (toString x);
    };
    # sops-nix's `pathNotInStore` and lanzaboote's `externalPath` in one:
    # an absolute path given as a string, never copied into the store.
    externalPath = mkOptionType {
      name = "externalPath";
      description = "absolute path not in the Nix store";
      check = x: isString x && hasPrefix "/" x && !(hasPrefix builtins.storeDir x);
    };
    package = mkOptionType {
      name = "package";
      description = "package";
      check = x: isDerivation x || (isString x && hasPrefix builtins.storeDir x);
      merge = mergeOneOption;
    };
    attrs = mkOptionType {
      name = "attrs";
      description = "attribute set";
      check = isAttrs;
      merge = _: defs: foldl' (a: d: a // d.value) { } defs;
    };
    enum =
      values:
      mkOptionType {
        name = "enum";
        description = "one of ${concatStringsSep ", " (map showValue values)}";
        check = x: elem x values;
      };
    nullOr =
      t:
      mkOptionType {
        name = "nullOr";
        description = "null or ${t.description}";
        check = x: x == null || t.check x;
        merge =
          loc: defs:
          let
            nulls = filter (d: d.value == null) defs;
          in
          if length nulls == length defs then
            null
          else if nulls != [ ] then
            throw "The option `${showLoc loc}' is defined both null and not null:\n${showDefs defs}"
          else
            t.merge loc defs;
        elemType = t;
      };
    either =
      a: b:
      mkOptionType {
        name = "either";
        description = "${a.description} or ${b.description}";
        check = x: a.check x || b.check x;
        merge =
          loc: defs:
          if all (d: a.check d.value) defs then
            a.merge loc defs
          else if all (d: b.check d.value) defs then
            b.merge loc defs
          else
            throw "The option `${showLoc loc}' has definitions of mixed types:\n${showDefs defs}";
      };
    oneOf = ts: foldl' either (head ts) (tail ts);
    listOf =
      elemType:
      mkOptionType {
        name = "listOf";
        description = "list of ${elemType.description}";
        check = isList;
        # Every element is merged alone, so it is checked against elemType
        # (and a submodule element evaluated as a module).
        merge =
          loc: defs:
          concatLists (
            builtins.genList (
              i:
              let
                d = builtins.elemAt defs i;
              in
              builtins.genList (
                j:
                (mergeDefinitions (loc ++ [ "[definition ${toString (i + 1)}-entry ${toString (j + 1)}]" ])
                  elemType
                  [
                    {
                      inherit (d) file;
                      value = builtins.elemAt d.value j;
                    }
                  ]
                ).value
              ) (length d.value)
            ) (length defs)
          );
        inherit elemType;
      };
    attrsOf =
      elemType:
      mkOptionType {
        name = "attrsOf";
        description = "attribute set of ${elemType.description}";
        check = x: isAttrs x && !(isDerivation x);
        merge =
          loc: defs:
          let
            byName = zipDefLists (
              map (d: mapAttrs (_: v: [ { inherit (d) file; value = v; } ]) d.value) defs
            );
            merged = mapAttrs (n: ds: mergeDefinitions (loc ++ [ n ]) elemType ds) byName;
          in
          mapAttrs (_: m: m.value) (filterAttrs (_: m: m.isDefined) merged);
        inherit elemType;
      };
    submoduleWith =
      {
        modules,
        specialArgs ? { },
      }:
      mkOptionType {
        name = "submodule";
        description = "submodule";
        check = x: isAttrs x || isFunction x || isPath x;
        merge =
          loc: defs:
          (evalModules {
            # A definition's attribute set is config only (nixpkgs'
            # shorthandOnlyDefinesConfig): `key`, `options`, ... are options there.
            modules =
              modules
              ++ map (
                d:
                if isAttrs d.value then
                  {
                    _file = d.file;
                    config = d.value;
                  }
                else
                  {
                    _file = d.file;
                    imports = [ d.value ];
                  }
              ) defs;
            specialArgs = specialArgs // {
              name = last loc;
            };
            prefix = loc;
          }).config;
        inherit modules;
      };
    submodule =
      m:
      submoduleWith {
        modules = if isList m then m else [ m ];
      };
}

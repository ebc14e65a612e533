# The lab's own module system: a small stand-in for nixpkgs' `lib.evalModules`.
#
# nixpkgs cannot be downloaded on the machines infratool is developed on, so
# the lab evaluates NixOS-shaped host configurations with this. It does what
# infratool's generated modules need, with the behaviour of nixpkgs' lib
# (nixpkgs lib/modules.nix, lib/types.nix, lib/options.nix), written anew:
#
# - modules: a function or an attribute set; `imports`, `options`, `config`,
#   or the shorthand (an attribute set without those is all config);
# - options with types that are checked (bool, str, lines, int, port, path,
#   package, enum, nullOr, either, oneOf, listOf, attrsOf, submodule, attrs,
#   anything) and merged like nixpkgs merges them;
# - properties: mkIf, mkMerge, mkOverride (mkDefault 1000, mkForce 50,
#   option defaults 1500), mkBefore/mkAfter/mkOrder (order only);
# - an error on a definition of an option that is not declared ("The option
#   `a.b' does not exist.") and on a value of the wrong type ("A definition
#   for option `a.b' is not of type `boolean'."), naming the file.
#
# Generated modules never depend on this file: they take `lib` as an argument,
# which on a real NixOS host is nixpkgs' lib.
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatMap
    concatStringsSep
    elem
    filter
    foldl'
    functionArgs
    genericClosure
    hasAttr
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
    listToAttrs
    mapAttrs
    removeAttrs
    substring
    stringLength
    tail
    toJSON
    typeOf
    ;

  lib = rec {
    # -- small helpers ---------------------------------------------------------

    inherit
      all
      any
      attrNames
      concatLists
      concatMap
      concatStringsSep
      elem
      filter
      foldl'
      hasAttr
      head
      isAttrs
      isList
      isString
      length
      listToAttrs
      mapAttrs
      tail
      ;

    showLoc = loc: concatStringsSep "." loc;

    showValue =
      v:
      let
        t = typeOf v;
      in
      if t == "string" then
        toJSON v
      else if t == "int" || t == "float" || t == "bool" then
        toJSON v
      else if t == "null" then
        "null"
      else if t == "path" then
        toString v
      else if isDerivation v then
        "<derivation ${v.name or "?"}>"
      else if t == "list" then
        "[ ${concatStringsSep " " (map showValue v)} ]"
      else if t == "set" then
        "{ ${concatStringsSep " " (map (n: "${n} = ${showValue v.${n}};") (attrNames v))} }"
      else
        "<${t}>";

    showDefs =
      defs: concatStringsSep "\n" (map (d: "- In `${d.file}': ${showValue d.value}") defs);

    hasPrefix = p: s: substring 0 (stringLength p) s == p;
    isDerivation = v: isAttrs v && (v.type or null) == "derivation";
    isStringLike = v: isString v || isPath v || isDerivation v || (isAttrs v && v ? outPath);
    optionalAttrs = c: a: if c then a else { };
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    mapAttrsToList = f: a: map (n: f n a.${n}) (attrNames a);
    filterAttrs =
      p: a:
      listToAttrs (
        concatMap (n: if p n a.${n} then [ { name = n; value = a.${n}; } ] else [ ]) (attrNames a)
      );
    concatStrings = concatStringsSep "";
    concatMapStrings = f: l: concatStrings (map f l);
    concatMapStringsSep = sep: f: l: concatStringsSep sep (map f l);
    unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
    last = l: builtins.elemAt l (length l - 1);
    zipDefLists =
      sets: foldl' (acc: s: acc // mapAttrs (n: l: (acc.${n} or [ ]) ++ l) s) { } sets;

    # -- properties --------------------------------------------------------------

    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkOptionDefault = mkOverride 1500;
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    mkVMOverride = mkOverride 10;
    mkOrder = priority: content: {
      _type = "order";
      inherit priority content;
    };
    mkBefore = mkOrder 500;
    mkAfter = mkOrder 1500;
    defaultPriority = 100;

    # `v` (an attribute set, maybe wrapped in properties) as name -> [values],
    # the properties pushed down onto each attribute. Conditions are not
    # forced here, only attribute names, as in nixpkgs: a module may write
    # `config = mkIf cfg.enable { ... }` about its own options.
    pushDown =
      loc: v:
      let
        t = v._type or null;
      in
      if t == "merge" then
        zipDefLists (map (pushDown loc) v.contents)
      else if t == "if" then
        mapAttrs (_: map (mkIf v.condition)) (pushDown loc v.content)
      else if t == "override" then
        mapAttrs (_: map (mkOverride v.priority)) (pushDown loc v.content)
      else if t == "order" then
        pushDown loc v.content
      else if isAttrs v && !(isDerivation v) then
        mapAttrs (_: x: [ x ]) v
      else
        throw "The option `${showLoc loc}' does not exist (it is a set of options, got ${showValue v}).";

    # A definition with its properties discharged: a list of {priority, value}.
    discharge =
      loc: priority: v:
      let
        t = v._type or null;
      in
      if t == "merge" then
        concatMap (discharge loc priority) v.contents
      else if t == "if" then
        (
          if !(isBool v.condition) then
            throw "The condition of a mkIf for option `${showLoc loc}' is not a boolean: ${showValue v.condition}"
          else if v.condition then
            discharge loc priority v.content
          else
            [ ]
        )
      else if t == "override" then
        # The content is not looked at until its priority wins: an option
        # default that would throw (it reads an undefined option) is never
        # forced when a definition overrides it, as in nixpkgs.
        [
          {
            inherit (v) priority;
            value = v.content;
            deferred = true;
          }
        ]
      else if t == "order" then
        discharge loc priority v.content
      else
        [ { inherit priority; value = v; } ];

    # Merge the definitions `defs` ([{file, value}]) of one option of `type`:
    # properties discharged, the highest priority kept, each value checked.
    mergeDefinitions =
      loc: type: defs:
      let
        flat = concatMap (
          d: map (x: x // { inherit (d) file; }) (discharge loc defaultPriority d.value)
        ) defs;
        best = foldl' (m: d: if d.priority < m then d.priority else m) 9999 flat;
        kept = concatMap (
          d:
          if d.deferred or false then
            map (x: {
              inherit (d) file;
              inherit (x) value;
            }) (discharge loc d.priority d.value)
          else
            [ { inherit (d) file value; } ]
        ) (filter (d: d.priority == best) flat);
        bad = filter (d: !(type.check d.value)) kept;
      in
      {
        isDefined = kept != [ ];
        value =
          if kept == [ ] then
            throw "The option `${showLoc loc}' is used but not defined."
          else if bad != [ ] then
            throw "A definition for option `${showLoc loc}' is not of type `${type.description}'. Definition values:\n${showDefs bad}"
          else
            type.merge loc kept;
      };

    # -- options -------------------------------------------------------------------

    mkOption =
      {
        type ? types.unspecified,
        description ? "",
        ...
      }@attrs:
      attrs
      // {
        _type = "option";
        inherit type description;
      };

    mkEnableOption =
      name:
      mkOption {
        type = types.bool;
        default = false;
        description = "Whether to enable ${name}.";
      };

    isOption = v: isAttrs v && (v._type or null) == "option";

    # -- types -----------------------------------------------------------------------

    mkOptionType =
      {
        name,
        description ? name,
        check ? (_: true),
        merge ? mergeEqualOption,
        ...
      }@attrs:
      attrs
      // {
        _type = "option-type";
        inherit
          name
          description
          check
          merge
          ;
      };

    mergeEqualOption =
      loc: defs:
      let
        first = head defs;
      in
      if all (d: d.value == first.value) defs then
        first.value
      else
        throw "The option `${showLoc loc}' has conflicting definition values:\n${showDefs defs}";

    mergeOneOption =
      loc: defs:
      if length defs == 1 then
        (head defs).value
      else
        throw "The unique option `${showLoc loc}' is defined multiple times:\n${showDefs defs}";

    types = rec {
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
    };

    # -- evaluation --------------------------------------------------------------------

    # Every module reachable through `imports`, each once (a file imported twice
    # counts once, as in nixpkgs), as {file, module} with the function applied.
    collectModules =
      args: modules:
      let
        toItem =
          parentKey: parentFile: index: m:
          let
            fromFile = isPath m || isString m;
            file = if fromFile then toString m else parentFile;
            key = if fromFile then toString m else "${parentKey}:anon-${toString index}";
            loaded = if fromFile then import m else m;
            applied =
              if isFunction loaded then
                loaded (builtins.intersectAttrs (functionArgs loaded) args)
              else
                loaded;
            structured = any (n: hasAttr n applied) [
              "options"
              "config"
              "imports"
              "freeformType"
            ];
            shown = applied._file or file;
            body =
              if structured then
                {
                  options = applied.options or { };
                  config = applied.config or { };
                  imports = applied.imports or [ ];
                  freeformType = applied.freeformType or null;
                }
              else
                {
                  options = { };
                  config = removeAttrs applied [
                    "_file"
                    "key"
                    "meta"
                    "disabledModules"
                  ];
                  imports = [ ];
                  freeformType = null;
                };
          in
          {
            inherit key;
            file = shown;
          }
          // body;
        start = builtins.genList (i: toItem "<root>" "<unknown-file>" i (builtins.elemAt modules i)) (
          length modules
        );
      in
      genericClosure {
        startSet = start;
        operator =
          item: builtins.genList (i: toItem item.key item.file i (builtins.elemAt item.imports i)) (
            length item.imports
          );
      };

    # The declarations of all modules as one tree; two modules declaring the
    # same option is an error (infratool's stand-in declares each once).
    mergeDeclarations =
      loc: trees:
      let
        withFile = concatMap (t: mapAttrsToList (n: v: { inherit n v; inherit (t) file; }) t.tree) trees;
        names = unique (map (x: x.n) withFile);
      in
      listToAttrs (
        map (
          n:
          let
            these = filter (x: x.n == n) withFile;
            opts = filter (x: isOption x.v) these;
          in
          {
            name = n;
            value =
              if opts == [ ] then
                mergeDeclarations (loc ++ [ n ]) (
                  map (x: {
                    inherit (x) file;
                    tree = x.v;
                  }) these
                )
              else if length these == 1 then
                (head opts).v // { declarations = [ (head opts).file ]; }
              else
                throw "The option `${showLoc (loc ++ [ n ])}' in `${(builtins.elemAt these 1).file}' is already declared in `${(head these).file}'.";
          }
        ) names
      );

    # The value of every declared option under `decls`, from `defs`
    # ([{file, value}] of the module configs at this level).
    # With `definedOnly`, only what the modules define: option defaults are
    # not merged in, options without a definition are left out.
    evalNode =
      definedOnly: loc: decls: defs:
      let
        byName = zipDefLists (
          map (d: mapAttrs (_: map (v: { inherit (d) file; value = v; })) (pushDown loc d.value)) defs
        );
        merged = mapAttrs (
          n: decl:
          let
            here = byName.${n} or [ ];
          in
          if isOption decl then
            mergeDefinitions (loc ++ [ n ]) decl.type (
              here
              ++ optional (decl ? default && !definedOnly) {
                file = head (decl.declarations or [ "<default>" ]);
                value = mkOptionDefault decl.default;
              }
            )
          else
            {
              isDefined = true;
              value = evalNode definedOnly (loc ++ [ n ]) decl here;
            }
        ) decls;
      in
      mapAttrs (_: m: m.value) (if definedOnly then filterAttrs (_: m: m.isDefined) merged else merged);

    # Definitions of options nobody declared: [{loc, files}] (freeform
    # definitions at the top are allowed when the module set has one).
    unmatched =
      loc: decls: defs:
      let
        byName = zipDefLists (
          map (d: mapAttrs (_: map (v: { inherit (d) file; value = v; })) (pushDown loc d.value)) defs
        );
      in
      concatMap (
        n:
        if !(hasAttr n decls) then
          [
            {
              loc = loc ++ [ n ];
              defs = byName.${n};
            }
          ]
        else if isOption decls.${n} then
          [ ]
        else
          unmatched (loc ++ [ n ]) decls.${n} byName.${n}
      ) (attrNames byName);

    evalModules =
      {
        modules,
        specialArgs ? { },
        prefix ? [ ],
      }:
      let
        args = {
          inherit lib config options;
        }
        // specialArgs;
        collected = collectModules args modules;
        options = mergeDeclarations prefix (
          map (m: {
            inherit (m) file;
            tree = m.options;
          }) collected
        );
        defs = map (m: {
          inherit (m) file;
          value = m.config;
        }) collected;
        freeform = head (filter (t: t != null) (map (m: m.freeformType) collected) ++ [ null ]);
        declared = evalNode false prefix options defs;
        extra = unmatched prefix options defs;
        free =
          if freeform == null then
            { }
          else
            freeform.merge prefix (
              concatMap (
                e:
                map (d: {
                  inherit (d) file;
                  value = {
                    ${last e.loc} = d.value;
                  };
                }) e.defs
              ) (filter (e: length e.loc == length prefix + 1) extra)
            );
        problems = if freeform == null then extra else filter (e: length e.loc > length prefix + 1) extra;
        config = free // declared;
        check =
          if problems == [ ] then
            true
          else
            let
              p = head problems;
            in
            throw "The option `${showLoc p.loc}' does not exist. Definition values:\n${showDefs p.defs}";
      in
      {
        inherit options;
        # Reading the result checks that every definition has an option, as
        # nixpkgs does; the modules themselves see the unchecked fixpoint.
        config = builtins.seq check config;
        # Every option the modules define (defaults left out), checked: the
        # lab's toplevel renders it, so any type error fails the build.
        definedConfig = builtins.seq check (free // evalNode true prefix options defs);
      };
  };
in
lib

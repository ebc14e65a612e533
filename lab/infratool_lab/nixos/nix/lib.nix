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
# This file: helpers, properties, merging one option's definitions, options.
# types.nix: the option types. eval.nix: evalModules.
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

    types = import ./types.nix lib;

    # -- evaluation (eval.nix) ---------------------------------------------------

    inherit (import ./eval.nix lib) evalModules collectModules;

  };
in
lib

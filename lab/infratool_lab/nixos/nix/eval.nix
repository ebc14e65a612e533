# Evaluating modules for the lab's module system (see lib.nix): collecting
# imports, merging declarations, merging definitions per option, finding
# definitions of undeclared options; nixpkgs' lib/modules.nix, written anew.
lib:
let
  inherit (builtins)
    any
    attrNames
    concatMap
    filter
    functionArgs
    genericClosure
    hasAttr
    head
    isFunction
    isPath
    isString
    length
    listToAttrs
    mapAttrs
    removeAttrs
    ;
  inherit (lib)
    filterAttrs
    isOption
    last
    mapAttrsToList
    mergeDefinitions
    mkOptionDefault
    optional
    pushDown
    showDefs
    showLoc
    unique
    zipDefLists
    ;
in
rec {
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
}

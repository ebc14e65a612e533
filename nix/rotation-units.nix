# Generated from infratool/rotation/timer.py (unit_sections) — do not edit by hand.
# Regenerate: INFRATOOL_REGEN=1 pytest tests/unit/test_onboard_flake.py
# The @placeholders@ are filled in by ./units.nix.
[
  {
    name = "infratool-rotate.service";
    sections = [
      {
        entries = [
          [
            "Description"
            "infratool: rotate the fleet's secrets that are due"
          ]
          [
            "Wants"
            "network-online.target"
          ]
          [
            "After"
            "network-online.target"
          ]
        ];
        name = "Unit";
      }
      {
        entries = [
          [
            "Type"
            "oneshot"
          ]
          [
            "ExecStart"
            "@exe@ -i @inventory@ secrets rotate --due --yes --unattended"
          ]
          [
            "WorkingDirectory"
            "@flake@"
          ]
          [
            "LoadCredential"
            "sops-age-key:@ageKeyFile@"
          ]
          [
            "Environment"
            "SOPS_AGE_KEY_FILE=%d/sops-age-key"
          ]
          [
            "Environment"
            "INFRATOOL_AUDIT_LOG=/var/log/infratool/audit.jsonl"
          ]
          [
            "Environment"
            "NO_COLOR=1"
          ]
          [
            "LogsDirectory"
            "infratool"
          ]
          [
            "UMask"
            "0077"
          ]
          [
            "ReadWritePaths"
            "@flake@"
          ]
          [
            "ProtectSystem"
            "strict"
          ]
          [
            "ProtectHome"
            "read-only"
          ]
          [
            "PrivateTmp"
            "yes"
          ]
          [
            "PrivateDevices"
            "yes"
          ]
          [
            "NoNewPrivileges"
            "yes"
          ]
          [
            "ProtectKernelTunables"
            "yes"
          ]
          [
            "ProtectKernelModules"
            "yes"
          ]
          [
            "ProtectKernelLogs"
            "yes"
          ]
          [
            "ProtectControlGroups"
            "yes"
          ]
          [
            "ProtectClock"
            "yes"
          ]
          [
            "ProtectHostname"
            "yes"
          ]
          [
            "ProtectProc"
            "invisible"
          ]
          [
            "ProcSubset"
            "pid"
          ]
          [
            "RestrictNamespaces"
            "yes"
          ]
          [
            "RestrictRealtime"
            "yes"
          ]
          [
            "RestrictSUIDSGID"
            "yes"
          ]
          [
            "LockPersonality"
            "yes"
          ]
          [
            "RemoveIPC"
            "yes"
          ]
          [
            "RestrictAddressFamilies"
            "AF_INET AF_INET6 AF_UNIX"
          ]
          [
            "SystemCallArchitectures"
            "native"
          ]
          [
            "SystemCallFilter"
            "@system-service"
          ]
          [
            "SystemCallFilter"
            "~@privileged @resources"
          ]
          [
            "CapabilityBoundingSet"
            ""
          ]
          [
            "AmbientCapabilities"
            ""
          ]
          [
            "DevicePolicy"
            "closed"
          ]
          [
            "KeyringMode"
            "private"
          ]
          [
            "TimeoutStartSec"
            "30min"
          ]
        ];
        name = "Service";
      }
    ];
  }
  {
    name = "infratool-rotate.timer";
    sections = [
      {
        entries = [
          [
            "Description"
            "infratool: scheduled secrets rotation"
          ]
        ];
        name = "Unit";
      }
      {
        entries = [
          [
            "OnCalendar"
            "@onCalendar@"
          ]
          [
            "RandomizedDelaySec"
            "@randomizedDelay@"
          ]
          [
            "Persistent"
            "true"
          ]
          [
            "AccuracySec"
            "1min"
          ]
        ];
        name = "Timer";
      }
      {
        entries = [
          [
            "WantedBy"
            "timers.target"
          ]
        ];
        name = "Install";
      }
    ];
  }
]

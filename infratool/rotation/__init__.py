"""Rotation: the staged protocol (engine), its policy, state, lock, timer and notifications.

Below the tasks and above secrets/ and remote: tasks use the engine; the
engine uses the sops store and host contexts (docs/architecture.md).
"""

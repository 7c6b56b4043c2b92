"""Cooperation workflows after a hit or a request: hit follow-up, assistance requests (协查), directives (指令).

Pure state machines, deadlines and escalation (docs/workflows.md); the stream job owns the state and the timers.
"""

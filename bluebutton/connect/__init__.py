"""LinuxForHealth connect, the downstream: its client and the envelope it answers with."""

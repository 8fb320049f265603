"""Events: what happened to grants and runs, told to NATS JetStream and signed webhooks.

outbox.py      event rows written in the transaction of their change; grant.expiring
delivery.py    the procrastinate tasks: dispatch to targets, deliver with backoff
nats.py        JetStream publishing (stream BLUEBUTTON, Nats-Msg-Id = event id)
webhooks.py    Standard Webhooks POSTs over one TLS-verifying client
signing.py     the Standard Webhooks signature
"""

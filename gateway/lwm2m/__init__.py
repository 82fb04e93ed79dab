"""The LwM2M server: registration and Send interfaces, payload formats, the registry.

``server``
    ``LwM2MResource``, aiocoap's root resource: ``/rd`` (Register, Update,
    De-register) and ``/dp`` (Send); ``peer_address``, ``sockaddr_peer``.
``registry``
    ``Registry``: what those operations mean, committed to storage in group commits
    before the node gets its answer; ``RegistryEvent`` for listeners.
``codecs``
    ``decode`` / ``encode`` for every payload format, over ``senml``, ``tlv``,
    ``lwm2mcbor`` (and plain text / opaque); values are ``senml.Record``.
``paths``, ``linkformat``, ``params``
    LwM2M paths and object links; CoRE link format; registration parameters.
``ddf``
    object definitions from the DDF XML files in ``gateway/objects/``.
``bootstrap``
    the bootstrap server (``BootstrapServer``) and its configuration.

Nothing is re-exported here: the format modules sit below storage (``Record``), the
server and registry above it, so each is imported from its module.
"""

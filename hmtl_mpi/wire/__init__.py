"""The wire: what moves and counts bytes, below the schemes.

:mod:`.interfaces` declares the two boundaries (an :class:`~.interfaces.Endpoint` per
rank; the user, relay and server links a part may call); :mod:`.roles` implements the
links once over any endpoint; :mod:`.transport` is the MPI endpoint and
:mod:`.inprocess` the one-process endpoint; :mod:`.probe` measures links and
:mod:`.interconnect` says what carried the messages. See docs/wire.md.
"""

"""The connection layer: ``netpoll.Connection`` as a stack of small layers, one per module.

``_state`` (the fields, their locks and legal combinations: start reading there),
``_receive`` (the poller half), ``_task`` (the request task and the slow-handler policy),
``_read`` and ``_write`` (the slow paths of reading and writing); ``netpoll._connection``
puts the Reader/Writer calls and the settings on top.
"""

"""Lambda handlers as users write them, for the handler and lambda sink tests.

They are plain Lambda code: they know nothing of the poller. What they did is
written as JSON lines to the file named by the HANDLER_LOG environment
variable, which the tests read (the daemon runs them in a child process).
"""

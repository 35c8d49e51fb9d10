"""Plugins: operator-supplied Python files that filter signals, add risk rules and notify.

`api` is what plugin authors import (versioned, documented in plugins/README.md);
`loader` imports and validates one file; `host` is the registry the sizer and risk actors
call; `notify` delivers events to notifiers off the bar path; `views` builds the
read-only views hooks receive.
"""

"""The chain node as a process: data dir (`node`), HTTP API (`api`), metrics, a running node over HTTP (`remote`)."""

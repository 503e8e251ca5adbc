"""What the load generators of the tests and bench/group.py share (stdlib only: the bench imports it
before Django is set up)."""

import threading


class LoadThreads:
    """Threads that each run self._loop(*args) while a `with` block runs: started on entry; on exit
    self.stop is set and they are joined. A load generator (tests, bench/group.py) subclasses it with its
    _loop, and calls __init__ with one args tuple per thread; self.lock guards what the threads count."""

    def __init__(self, thread_args):
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=args, daemon=True) for args in thread_args]

    def _loop(self, *args):
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)

"""Images built from the lock.

    engine    the Docker Engine through the SDK: connect, inspect, errors mapped to exit codes
    registry  image references, registry digests, ECR logins, push
    buildkit  the BuildKit-capable docker CLI, its progress, one build
    plan      what goes into a target's image (base, digest, tags, labels); recorded in the lock
    build     `mlenv build`: plan, render, build, tag by content, push

The Docker Engine API offers BuildKit only over a session protocol the ``docker`` SDK does not
implement (docker-py #2230), so builds run through a CLI (``buildkit``); everything else uses the
SDK (``engine``).  Dev boxes reuse ``engine`` (the docker provider) and ``registry`` (ECR).
"""

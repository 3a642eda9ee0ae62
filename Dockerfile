# The agentstream image the Helm chart runs: every process (workers, projector, gateway)
# is this one command with different arguments. Build: docker build -t agentstream:0.1.0 .
FROM python:3.11-slim
RUN useradd --uid 10001 --create-home --home-dir /var/lib/agentstream agentstream
COPY . /src
# The versions CI tested (constraints.txt), not whatever the index serves on build day.
RUN pip install --no-cache-dir --disable-pip-version-check -c /src/constraints.txt \
        '/src[kafka,cassandra,memory,weaviate,gateway,k8s]' \
    && pip check && rm -rf /src
USER 10001
ENV AGENTSTREAM_HOME=/var/lib/agentstream
# A missing dependency fails the build, not the first pod.
RUN agentstream --help >/dev/null && agentstream schemas check
ENTRYPOINT ["agentstream"]

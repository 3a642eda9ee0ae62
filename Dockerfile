# The agentstream image the Helm chart runs: every process (workers, projector, gateway)
# is this one command with different arguments. Build: docker build -t agentstream:0.1.0 .
FROM python:3.11-slim
RUN useradd --uid 10001 --create-home --home-dir /var/lib/agentstream agentstream
COPY . /src
RUN pip install --no-cache-dir '/src[kafka,cassandra,memory,weaviate,gateway,k8s]' && rm -rf /src
USER 10001
ENV AGENTSTREAM_HOME=/var/lib/agentstream
ENTRYPOINT ["agentstream"]

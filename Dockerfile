# The MES image: `mes` is the entry point; the default command runs a worker.
#   docker build -t mes .
#   docker run --rm -e MES_SQL_DSN=... -e REDIS_CONN_STRING=... mes worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MES_DATA_DIR=/data
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY mes ./mes
COPY schemas ./schemas
COPY producer ./producer
COPY worker ./worker
RUN pip install -c requirements/lock.txt . \
    && useradd --system --uid 10001 --home-dir /data mes \
    && mkdir -p /data && chown mes /data
USER mes
WORKDIR /data
EXPOSE 8080 9100
ENTRYPOINT ["mes"]
CMD ["worker"]

# Vigil service image. Runs the service compiled to JavaScript (scripts/build.mjs → dist/): no
# TypeScript loader in the process or its worker threads.
# Node 24: the Active LTS (supported to April 2028); Node 22 is in maintenance until April 2027.
# Production dependencies need Node 22 or later (cookie 2, content-disposition 3), so
# `npm ci` here prints no EBADENGINE. The test suite runs on Node 20 (docs/operations.md).
FROM node:24-bookworm-slim
WORKDIR /app
# Voice note transcription: the offline recognizer, its English model, and sox for resampling.
RUN apt-get update && apt-get install -y --no-install-recommends pocketsphinx pocketsphinx-en-us sox \
  && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force
# .dockerignore keeps .env, key files and data directories out of this copy.
COPY . .
RUN node scripts/build.mjs --quiet
# The data directory, and a writable home for the alert rules (PUT /v1/alert-rules replaces the
# file by writing a sibling and renaming it, so the directory must be writable). A named volume
# mounted on /etc/vigil/rules starts as a copy of the shipped rules.
RUN mkdir -p /var/lib/vigil /etc/vigil/rules \
  && cp config/alert-rules.yaml /etc/vigil/rules/alert-rules.yaml \
  && chown -R node:node /var/lib/vigil /etc/vigil/rules
USER node
ENV VIGIL_DATA_DIR=/var/lib/vigil VIGIL_ALERT_RULES=/etc/vigil/rules/alert-rules.yaml HTTP_HOST=0.0.0.0 MQTT_HOST=0.0.0.0
EXPOSE 3000 1883 8883
CMD ["node", "dist/main.js"]

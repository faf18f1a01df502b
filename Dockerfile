# Vigil service image. Runs the TypeScript sources with tsx (a runtime dependency).
FROM node:20-bookworm-slim
WORKDIR /app
# Voice note transcription: the offline recognizer, its English model, and sox for resampling.
RUN apt-get update && apt-get install -y --no-install-recommends pocketsphinx pocketsphinx-en-us sox \
  && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force
COPY . .
RUN mkdir -p /var/lib/vigil && chown node:node /var/lib/vigil
USER node
ENV VIGIL_DATA_DIR=/var/lib/vigil HTTP_HOST=0.0.0.0 MQTT_HOST=0.0.0.0
EXPOSE 3000 1883
CMD ["node", "--import", "tsx", "main.ts"]

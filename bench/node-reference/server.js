// The Node reference for bench/load.py: the Express route a user would write with the
// official Orga Node SDK, CORS and express-rate-limit. Configured from the environment.
const express = require('express');
const cors = require('cors');
const { rateLimit } = require('express-rate-limit');
const { OrgaAI } = require('@orga-ai/node');

const orga = new OrgaAI({
  apiKey: process.env.ORGA_API_KEY,
  userEmail: process.env.ORGA_USER_EMAIL,
  baseUrl: process.env.ORGA_BASE_URL,
});

const app = express();
app.use(cors({ origin: (process.env.ALLOWED_ORIGINS || '').split(',').filter(Boolean) }));
app.use(
  '/api/orga/credentials',
  rateLimit({
    windowMs: 60_000,
    limit: Number(process.env.RATE_LIMIT_PER_MINUTE || 30),
    standardHeaders: 'draft-7',
    legacyHeaders: false,
  }),
);
app.all('/api/orga/credentials', async (_req, res) => {
  try {
    const { ephemeralToken, iceServers } = await orga.getSessionConfig();
    res.set('Cache-Control', 'no-store').json({ ephemeralToken, iceServers });
  } catch (error) {
    res.status(502).json({ error: { message: 'upstream failed', type: 'upstream_error', code: 'upstream_error' } });
  }
});

const port = Number(process.env.PORT || 3000);
app.listen(port, '127.0.0.1', () => console.log(`node reference listening on ${port}`));

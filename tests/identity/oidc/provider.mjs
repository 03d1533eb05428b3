// A real OpenID Provider (panva/oidc-provider 9.x) on loopback, for cport's JWT verifier tests.
//
// Started by tests/identity/oidc_provider.py; not part of cport. It issues JWT access tokens
// through the client_credentials grant with RFC 8707 resource indicators, signed with the private
// keys the test wrote to --keys (so the test controls key rotation), and serves discovery and the
// public JWKS over plain HTTP on 127.0.0.1.
//
//   node provider.mjs --port PORT --keys FILE --secret SECRET
//        [--issuer http://127.0.0.1:PORT] [--alg ES256|RS256|EdDSA] [--ttl 300]
//        [--audience cport] [--resource urn:cport:test] [--claims FILE]
//
// Clients (client_credentials only, secret --secret; registered as client_secret_basic, and
// oidc-provider accepts client_secret_post for such clients too):
//   cport-test  claims groups ["dba","dev"], email cport-test@example.test
//   agent       claims groups ["dev"], email agent@example.test, and always
//               act {"sub":"copilot","client_id":"copilot"} (RFC 8693 actor)
// Any client asking for scope "delegated" also gets that act claim. --claims FILE (JSON object
// {client_id: {claim: value}}) replaces a client's extra claims; a client_id not listed above is
// registered as a further client with the same secret. Resource-server scopes: "read write
// delegated". Prints "READY <issuer>" on stdout when listening; exits 0 on SIGTERM or SIGINT.

import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    issuer: { type: 'string' },
    keys: { type: 'string' },
    secret: { type: 'string' },
    alg: { type: 'string', default: 'ES256' },
    ttl: { type: 'string', default: '300' },
    audience: { type: 'string', default: 'cport' },
    resource: { type: 'string', default: 'urn:cport:test' },
    claims: { type: 'string' },
  },
  strict: true,
});

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

const port = Number.parseInt(args.port ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('--port PORT is required');
if (!args.keys) fail('--keys FILE is required');
if (!args.secret) fail('--secret SECRET is required');
const ttl = Number.parseInt(args.ttl, 10);
if (!Number.isInteger(ttl) || ttl <= 0) fail('--ttl must be a positive integer');
const issuer = args.issuer ?? `http://127.0.0.1:${port}`;
const { alg, audience, resource } = args;

const jwks = JSON.parse(fs.readFileSync(args.keys, 'utf8'));
if (!Array.isArray(jwks.keys) || jwks.keys.length === 0) fail(`${args.keys}: no "keys"`);

const ACTOR = { sub: 'copilot', client_id: 'copilot' };
const extraClaims = {
  'cport-test': { groups: ['dba', 'dev'], email: 'cport-test@example.test' },
  agent: { groups: ['dev'], email: 'agent@example.test', act: ACTOR },
};
if (args.claims) {
  Object.assign(extraClaims, JSON.parse(fs.readFileSync(args.claims, 'utf8')));
}

const clients = Object.keys(extraClaims).map((clientId) => ({
  client_id: clientId,
  client_secret: args.secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
}));

const configuration = {
  clients,
  // The client default is RS256; with no RSA key in --keys the clients would be rejected
  // ("id_token_signed_response_alg must be 'ES256'"), so follow --alg.
  clientDefaults: { id_token_signed_response_alg: alg },
  jwks,
  // Everything the test does not use is off, so the provider starts fast and warns little.
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    userinfo: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // No defaultResource: a request without resource= gets an opaque token, as in production.
      async getResourceServerInfo(ctx, resourceIndicator, client) {
        if (resourceIndicator !== resource) throw new errors.InvalidTarget();
        return {
          scope: 'read write delegated',
          audience,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg } },
        };
      },
    },
  },
  async extraTokenClaims(ctx, token) {
    const claims = { ...(extraClaims[token.clientId] ?? {}) };
    if (token.scope?.split(' ').includes('delegated')) claims.act = ACTOR;
    return claims;
  },
  ttl: {
    AccessToken: ttl,
    ClientCredentials: ttl,
  },
  cookies: { keys: ['cport-test-only-cookie-key'] },
  // Not used (no end users), but oidc-provider requires a way to find accounts.
  async findAccount() {
    return undefined;
  },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, err) => {
  process.stderr.write(`provider.mjs: server_error ${err?.stack ?? err}\n`);
});
provider.on('grant.error', (ctx, err) => {
  process.stderr.write(`provider.mjs: grant.error ${err?.name}: ${err?.error_description ?? err?.message}\n`);
});

const server = http.createServer(provider.callback());
server.on('error', (err) => fail(`cannot listen on 127.0.0.1:${port}: ${err.message}`));
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

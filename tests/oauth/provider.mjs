// A real OAuth 2.0 / OpenID Connect server (oidc-provider) for cedargate's tests, on
// 127.0.0.1:$PORT. Clients: `app` (client credentials) and `cedargate` (introspection).
// Access tokens for https://opaque.test are opaque and resolve through introspection; for
// any other resource they are JWTs (ES256, RFC 9068). Signing keys: $SIGNING_KEYS = "kid=pem,...",
// the first one signs, so restarting with a new first key rotates.
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const keys = (process.env.SIGNING_KEYS ?? '').split(',').filter(Boolean).map((entry) => {
  const [kid, path] = entry.split('=');
  return { ...createPrivateKey(readFileSync(path)).export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' };
});
const OPAQUE = 'https://opaque.test';
// A client that authenticates with private_key_jwt, holding the key in $CLIENT_KEY.
const clientKey = process.env.CLIENT_KEY
  ? { ...createPrivateKey(readFileSync(process.env.CLIENT_KEY)).export({ format: 'jwk' }), alg: 'ES256', use: 'sig' }
  : null;
const publicPart = (jwk) => ({ kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, alg: jwk.alg, use: jwk.use });

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'cedargate',
      client_secret: 'cedargate-secret',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: 'ES256',
    },
    {
      client_id: 'app',
      client_secret: 'app-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'profile:read admin',
      id_token_signed_response_alg: 'ES256',
    },
    ...(clientKey
      ? [{
        client_id: 'cedargate-pkjwt',
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_signing_alg: 'ES256',
        id_token_signed_response_alg: 'ES256',
        jwks: { keys: [publicPart(clientKey)] },
      }]
      : []),
  ],
  jwks: { keys },
  scopes: ['profile:read', 'admin'],
  extraTokenClaims: async (ctx, token) => ({ roles: token.clientId === 'app' ? ['user'] : [] }),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://api.test',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'profile:read admin',
        audience: resource,
        // https://short.test tokens live one second, to see expiry.
        accessTokenTTL: resource === 'https://short.test' ? 1 : 600,
        accessTokenFormat: resource === OPAQUE ? 'opaque' : 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});

const server = provider.listen(port, '127.0.0.1', () => console.log(`ready ${issuer}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));

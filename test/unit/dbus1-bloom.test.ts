/**
 * sd-bus bloom filters. Expected values do not come from this implementation:
 * - SipHash-2-4: the 64 reference vectors of the SipHash authors (key 00..0f, message
 *   00..n-1), the same values OpenSSL's SIPHASH MAC (size 8) gives;
 * - bit indices: for each "key:value" string, its SipHash outputs under bus-bloom.c's keys
 *   were taken from OpenSSL and cut into indices by hand per the algorithm (w bytes per
 *   index read big-endian from the little-endian output bytes, masked with m - 1);
 * - which strings a message or a rule contributes: spelled out by hand from sd-bus v229's
 *   bus_message_setup_bloom / bus_add_match_internal_kernel;
 * - the match outcomes of sd-bus's test-bus-kernel-bloom.c.
 */
import assert from 'node:assert/strict';
import { Bloom, isValidBloomParameters, SD_BUS_BLOOM_N_HASH, SD_BUS_BLOOM_SIZE } from '../../src/dbus1/bloom';
import { kdbusMatchOf, MatchRule, type MatchMessage, type NameOwners } from '../../src/dbus1/match-rule';
import { siphash24, SipHashKey } from '../../src/dbus1/siphash';

const REFERENCE_KEY = Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex');
/** Output n: SipHash-2-4 of the n bytes 00, 01, ..., n-1 under REFERENCE_KEY, as output bytes. */
const REFERENCE_VECTORS = [
  '310e0edd47db6f72', 'fd67dc93c539f874', '5a4fa9d909806c0d', '2d7efbd796666785', 'b7877127e09427cf', '8da699cd64557618',
  'cee3fe586e46c9cb', '37d1018bf50002ab', '6224939a79f5f593', 'b0e4a90bdf82009e', 'f3b9dd94c5bb5d7a', 'a7ad6b22462fb3f4',
  'fbe50e86bc8f1e75', '903d84c02756ea14', 'eef27a8e90ca23f7', 'e545be4961ca29a1', 'db9bc2577fcc2a3f', '9447be2cf5e99a69',
  '9cd38d96f0b3c14b', 'bd6179a71dc96dbb', '98eea21af25cd6be', 'c7673b2eb0cbf2d0', '883ea3e395675393', 'c8ce5ccd8c030ca8',
  '94af49f6c650adb8', 'eab8858ade92e1bc', 'f315bb5bb835d817', 'adcf6b0763612e2f', 'a5c91da7acaa4dde', '716595876650a2a6',
  '28ef495c53a387ad', '42c341d8fa92d832', 'ce7cf2722f512771', 'e37859f94623f3a7', '381205bb1ab0e012', 'ae97a10fd434e015',
  'b4a31508beff4d31', '81396229f0907902', '4d0cf49ee5d4dcca', '5c73336a76d8bf9a', 'd0a704536ba93e0e', '925958fcd6420cad',
  'a915c29bc8067318', '952b79f3bc0aa6d4', 'f21df2e41d4535f9', '87577519048f53a9', '10a56cf5dfcd9adb', 'eb75095ccd986cd0',
  '51a9cb9ecba312e6', '96afadfc2ce666c7', '72fe52975a4364ee', '5a1645b276d592a1', 'b274cb8ebf87870a', '6f9bb4203de7b381',
  'eaecb2a30b22a87f', '9924a43cc1315724', 'bd838d3aafbf8db7', '0b1a2a3265d51aea', '135079a3231ce660', '932b2846e4d70666',
  'e1915f5cb1eca46c', 'f325965ca16d629f', '575ff28e60381be5', '724506eb4c328a95',
];

/** bus-bloom.c's first two keys (the only ones a 64-byte, 8-hash filter uses). */
const K0 = Buffer.from('b9660bf0467047c18875c49c54b9bd15', 'hex');
const K1 = Buffer.from('aaa154a2e0714b39bfe1dd2e9fc54a3b', 'hex');

/**
 * Bit indices each string sets in a 64-byte filter with 8 hashes (m = 512, w = 2): indices
 * 0-3 from the output bytes of SipHash under K0 taken in pairs, 4-7 likewise under K1.
 */
const BITS_64_8: Record<string, number[]> = {
  'message-type:signal': [388, 108, 102, 383, 132, 138, 312, 309],
  'message-type:method_call': [53, 167, 220, 139, 14, 293, 330, 225],
  'interface:waldo.com': [464, 62, 311, 66, 322, 311, 365, 419],
  'member:Piep': [352, 453, 152, 254, 71, 445, 205, 432],
  'path:/foo/bar/waldo': [72, 133, 285, 89, 207, 310, 349, 59],
  'path-slash-prefix:/foo/bar/waldo': [11, 488, 233, 265, 2, 479, 234, 25],
  'path-slash-prefix:/foo/bar/': [280, 270, 29, 443, 194, 109, 102, 164],
  'path-slash-prefix:/foo/bar': [367, 20, 0, 18, 133, 345, 440, 365],
  'path-slash-prefix:/foo/': [509, 71, 338, 505, 464, 212, 339, 163],
  'path-slash-prefix:/foo': [235, 24, 425, 314, 321, 144, 146, 360],
  'path-slash-prefix:/': [163, 298, 112, 257, 171, 260, 48, 403],
  'arg0:foobar': [13, 4, 232, 128, 14, 116, 404, 168],
  'arg0-dot-prefix:foobar': [305, 131, 506, 327, 328, 63, 11, 439],
  'arg0-slash-prefix:foobar': [165, 458, 60, 214, 387, 485, 436, 464],
  'arg0-has:foobar': [329, 67, 367, 71, 239, 59, 59, 459],
  'arg0:a.b': [31, 374, 393, 20, 395, 457, 503, 321],
  'arg0-dot-prefix:a.b': [49, 478, 143, 63, 145, 353, 486, 451],
  'arg0-dot-prefix:a.': [236, 47, 69, 325, 380, 109, 160, 173],
  'arg0-dot-prefix:a': [321, 398, 10, 313, 135, 372, 432, 266],
  'arg0-slash-prefix:a.b': [346, 12, 41, 19, 406, 400, 198, 33],
  'arg1:/x/y': [193, 488, 359, 91, 414, 145, 191, 90],
  'arg1-dot-prefix:/x/y': [461, 55, 506, 20, 237, 11, 427, 404],
  'arg1-slash-prefix:/x/y': [481, 481, 232, 48, 184, 14, 144, 298],
  'arg1-slash-prefix:/x/': [407, 318, 399, 396, 476, 221, 52, 247],
  'arg1-slash-prefix:/x': [259, 277, 312, 269, 322, 92, 238, 419],
  'arg1-slash-prefix:/': [156, 255, 9, 340, 58, 190, 273, 485],
  'arg0-has:p': [279, 53, 484, 343, 48, 371, 63, 36],
  'arg0-has:q': [264, 168, 485, 180, 124, 163, 195, 90],
  'arg1:z': [74, 244, 355, 410, 365, 294, 504, 296],
  'arg1-dot-prefix:z': [427, 305, 243, 282, 413, 147, 80, 243],
  'arg1-slash-prefix:z': [380, 395, 21, 62, 286, 269, 45, 482],
  'arg3:w': [386, 372, 463, 420, 362, 317, 34, 13],
  'arg3-dot-prefix:w': [396, 405, 25, 265, 232, 159, 507, 31],
  'arg3-slash-prefix:w': [43, 270, 397, 497, 71, 36, 314, 20],
  'arg1:s': [276, 71, 381, 19, 348, 341, 440, 356],
  'arg1-dot-prefix:s': [0, 452, 435, 307, 25, 17, 98, 388],
  'arg1-slash-prefix:s': [467, 75, 8, 184, 290, 31, 281, 74],
  'arg0:grüße': [213, 278, 107, 82, 21, 51, 396, 397], // hashed as UTF-8
};

/**
 * A filter as kdbus and sd-bus lay it out: an array of u64 words, bit p in word p / 64 at
 * position p % 64, words in the host's (little-endian) byte order.
 */
function filterWith(size: number, bits: Iterable<number>): Buffer {
  const words = new BigUint64Array(size / 8);
  for (const p of bits) words[p >> 6]! |= 1n << BigInt(p & 63);
  return Buffer.from(words.buffer);
}

function bitsOf(keys: readonly string[]): number[] {
  return keys.flatMap((k) => {
    const bits = BITS_64_8[k];
    assert.ok(bits !== undefined, `no pinned vector for ${k}`);
    return bits;
  });
}

const covers = (filter: Buffer, mask: Buffer): boolean => mask.every((b, i) => (filter[i]! & b) === b);

const sd = new Bloom(SD_BUS_BLOOM_SIZE, SD_BUS_BLOOM_N_HASH);

describe('dbus1 bloom: SipHash-2-4', () => {
  it('gives the 64 reference vectors', () => {
    const seq = Buffer.from(Array.from({ length: 64 }, (_, i) => i));
    REFERENCE_VECTORS.forEach((hex, n) => {
      const expected = Buffer.from(hex, 'hex').readBigUInt64LE(0);
      assert.equal(siphash24(seq.subarray(0, n), REFERENCE_KEY), expected, `message length ${n}`);
    });
  });

  it("matches the paper's example and systemd's test value", () => {
    const seq15 = Buffer.from(Array.from({ length: 15 }, (_, i) => i));
    assert.equal(siphash24(seq15, REFERENCE_KEY), 0xa129ca6149be45e5n);
    assert.equal(siphash24(Buffer.alloc(0), new SipHashKey(REFERENCE_KEY)), 0x726fdb47dd0e0e31n);
  });

  it('hashes a subarray without looking outside it', () => {
    const seq = Buffer.from(Array.from({ length: 40 }, (_, i) => i));
    const shifted = Buffer.concat([Buffer.from([0xff, 0xee, 0xdd]), seq.subarray(0, 15), Buffer.from([0x77])]);
    assert.equal(siphash24(shifted.subarray(3, 18), REFERENCE_KEY), 0xa129ca6149be45e5n);
  });

  it('rejects keys that are not 16 bytes', () => {
    assert.throws(() => new SipHashKey(Buffer.alloc(15)), RangeError);
  });

  it('gives the OpenSSL outputs for "message-type:signal" under the first two bloom keys', () => {
    const s = Buffer.from('message-type:signal');
    assert.equal(siphash24(s, K0), Buffer.from('eb84fa6c4a66d57f', 'hex').readBigUInt64LE(0));
    assert.equal(siphash24(s, K1), Buffer.from('8e84648a5938bb35', 'hex').readBigUInt64LE(0));
  });
});

describe('dbus1 bloom: bits of one string', () => {
  it('"message-type:signal" sets the bits its hash bytes name', () => {
    // Under K0: eb84 fa6c 4a66 d57f → 0xeb84 & 511 = 388, 0xfa6c & 511 = 108, 0x4a66 & 511 = 102,
    // 0xd57f & 511 = 383; under K1: 8e84 648a 5938 bb35 → 132, 138, 312, 309.
    const f = Buffer.alloc(64);
    sd.add(f, 'message-type:signal');
    assert.deepEqual(f, filterWith(64, [388, 108, 102, 383, 132, 138, 312, 309]));
  });

  it('every pinned string sets exactly its bits', () => {
    for (const [s, bits] of Object.entries(BITS_64_8)) {
      const f = Buffer.alloc(64);
      sd.add(f, s);
      assert.deepEqual(f, filterWith(64, bits), s);
    }
  });

  it('one byte per index for small filters, masked with m - 1 even when m is no power of two', () => {
    // 8 bytes: m = 64, w = 1 → eb & 63, 84 & 63, fa & 63.
    const f8 = Buffer.alloc(8);
    new Bloom(8, 3).add(f8, 'message-type:signal');
    assert.deepEqual(f8, filterWith(8, [43, 4, 58]));
    // 24 bytes: m = 192, log2 → 7, w = 1, mask 191: eb & 191 = 171, 84 & 191 = 132.
    const f24 = Buffer.alloc(24);
    new Bloom(24, 2).add(f24, 'message-type:signal');
    assert.deepEqual(f24, filterWith(24, [171, 132]));
  });

  it('indices straddle two hash outputs when w does not divide 8', () => {
    // 16384 bytes: m = 2^17, w = 3: eb84fa, 6c4a66, then d57f from K0 and 8e from K1; & 0x1ffff.
    const f = Buffer.alloc(16384);
    new Bloom(16384, 3).add(f, 'message-type:signal');
    assert.deepEqual(f, filterWith(16384, [0xeb84fa & 0x1ffff, 0x6c4a66 & 0x1ffff, 0xd57f8e & 0x1ffff]));
  });

  it('mask() is the union of its strings', () => {
    const keys = ['message-type:signal', 'interface:waldo.com', 'member:Piep'];
    assert.deepEqual(sd.mask(keys), filterWith(64, bitsOf(keys)));
    assert.deepEqual(sd.mask([]), Buffer.alloc(64));
  });
});

describe('dbus1 bloom: parameters', () => {
  it('accepts what bloom_validate_parameters accepts', () => {
    assert.ok(isValidBloomParameters(64, 8));
    assert.ok(isValidBloomParameters(64, 32)); // 32 indices x 2 bytes = all 64 hash bytes
    assert.ok(!isValidBloomParameters(64, 33));
    assert.ok(isValidBloomParameters(8, 64)); // w = 1
    assert.ok(!isValidBloomParameters(8, 65));
    assert.ok(isValidBloomParameters(4096, 32)); // m = 32768, w = 2
    assert.ok(!isValidBloomParameters(0, 8));
    assert.ok(!isValidBloomParameters(64, 0));
    assert.ok(!isValidBloomParameters(64.5, 8));
  });

  it('refuses to build filters for invalid parameters', () => {
    assert.throws(() => new Bloom(64, 33), RangeError);
    assert.throws(() => new Bloom(0, 1), RangeError);
  });
});

describe('dbus1 bloom: signal filters (bus_message_setup_bloom)', () => {
  const waldo = { type: 'signal', path: '/foo/bar/waldo', interface: 'waldo.com', member: 'Piep' } as const;
  const waldoKeys = [
    'message-type:signal', 'interface:waldo.com', 'member:Piep', 'path:/foo/bar/waldo',
    'path-slash-prefix:/foo/bar/waldo', 'path-slash-prefix:/foo/bar/', 'path-slash-prefix:/foo/bar',
    'path-slash-prefix:/foo/', 'path-slash-prefix:/foo', 'path-slash-prefix:/',
  ];

  it('type, interface, member, path and every slash prefix of the path, then arg0 and its prefixes', () => {
    const m = { ...waldo, args: ['foobar'], argTypes: ['s'] };
    const expected = filterWith(64, bitsOf([...waldoKeys, 'arg0:foobar', 'arg0-dot-prefix:foobar', 'arg0-slash-prefix:foobar']));
    assert.deepEqual(sd.filter(m, 'sd-bus'), expected);
    assert.deepEqual(sd.filter(m, 'union'), expected);
  });

  it('a string array argument adds argN-has per element', () => {
    const m = { ...waldo, args: [['foobar']], argTypes: ['as'] };
    assert.deepEqual(sd.filter(m, 'sd-bus'), filterWith(64, bitsOf([...waldoKeys, 'arg0-has:foobar'])));
  });

  it('sd-bus stops after the first string argument; union goes on', () => {
    const m = { type: 'signal' as const, args: ['a.b', '/x/y'], argTypes: ['s', 'o'] };
    const first = ['message-type:signal', 'arg0:a.b', 'arg0-dot-prefix:a.b', 'arg0-dot-prefix:a.', 'arg0-dot-prefix:a', 'arg0-slash-prefix:a.b'];
    const second = ['arg1:/x/y', 'arg1-dot-prefix:/x/y', 'arg1-slash-prefix:/x/y', 'arg1-slash-prefix:/x/', 'arg1-slash-prefix:/x', 'arg1-slash-prefix:/'];
    assert.deepEqual(sd.filter(m, 'sd-bus'), filterWith(64, bitsOf(first)));
    assert.deepEqual(sd.filter(m, 'union'), filterWith(64, bitsOf([...first, ...second])));
  });

  it('sd-bus goes on after string arrays and stops at other types; union skips them', () => {
    const m = { type: 'method_call' as const, args: [['p', 'q'], 'z', 7, 'w'], argTypes: ['as', 's', 'u', 's'] };
    const sdKeys = ['message-type:method_call', 'arg0-has:p', 'arg0-has:q', 'arg1:z', 'arg1-dot-prefix:z', 'arg1-slash-prefix:z'];
    assert.deepEqual(sd.filter(m, 'sd-bus'), filterWith(64, bitsOf(sdKeys)));
    assert.deepEqual(sd.filter(m, 'union'), filterWith(64, bitsOf([...sdKeys, 'arg3:w', 'arg3-dot-prefix:w', 'arg3-slash-prefix:w'])));
    const intFirst = { type: 'signal' as const, args: [5, 's'], argTypes: ['u', 's'] };
    assert.deepEqual(sd.filter(intFirst, 'sd-bus'), filterWith(64, bitsOf(['message-type:signal'])));
    assert.deepEqual(sd.filter(intFirst, 'union'), filterWith(64, bitsOf(['message-type:signal', 'arg1:s', 'arg1-dot-prefix:s', 'arg1-slash-prefix:s'])));
  });

  it('hashes argument strings as UTF-8', () => {
    const m = { type: 'signal' as const, args: ['grüße'], argTypes: ['s'] };
    const f = sd.filter(m, 'sd-bus');
    assert.ok(covers(f, filterWith(64, bitsOf(['arg0:grüße']))));
  });

  it('hashes at most 64 arguments', () => {
    const args = Array.from({ length: 70 }, () => 'v');
    const all = sd.filter({ type: 'signal', args, argTypes: args.map(() => 's') }, 'union');
    const first64 = sd.filter({ type: 'signal', args: args.slice(0, 64), argTypes: args.slice(0, 64).map(() => 's') }, 'union');
    assert.deepEqual(all, first64);
  });
});

describe("dbus1 bloom: masks against filters (sd-bus's test-bus-kernel-bloom cases)", () => {
  const owners: NameOwners = { primaryOwner: (n) => (n.startsWith(':') ? n : undefined) };

  /** What the kdbus match plus sd-bus's userspace check decide together. */
  function delivered(path: string, arg0: string | string[], rule: string): boolean {
    const m: MatchMessage = {
      type: 'signal', path, interface: 'waldo.com', member: 'Piep',
      args: [arg0], argTypes: [typeof arg0 === 'string' ? 's' : 'as'],
    };
    const r = MatchRule.parse(rule);
    const mask = sd.mask(kdbusMatchOf(r, 'sd-bus').bloomKeys);
    const passes = covers(sd.filter(m, 'sd-bus'), mask);
    const matches = r.matches(m, owners);
    if (matches) assert.ok(passes, `bloom false negative for ${rule}`);
    return passes && matches;
  }

  const cases: Array<[string, string, string, boolean]> = [
    ['/foo/bar/waldo', 'foobar', '', true],
    ['/foo/bar/waldo', 'foobar', "path='/foo/bar/waldo'", true],
    ['/foo/bar/waldo', 'foobar', "path='/foo/bar/waldo/tuut'", false],
    ['/foo/bar/waldo', 'foobar', "interface='waldo.com'", true],
    ['/foo/bar/waldo', 'foobar', "member='Piep'", true],
    ['/foo/bar/waldo', 'foobar', "member='Pi_ep'", false],
    ['/foo/bar/waldo', 'foobar', "arg0='foobar'", true],
    ['/foo/bar/waldo', 'foobar', "arg0='foo_bar'", false],
    ['/foo/bar/waldo', 'foobar', "path='/foo/bar/waldo',interface='waldo.com',member='Piep',arg0='foobar'", true],
    ['/foo/bar/waldo', 'foobar', "path='/foo/bar/waldo',interface='waldo.com',member='Piep',arg0='foobar2'", false],
    ['/foo/bar/waldo', 'foobar', "path='/foo/bar'", false],
    ['/foo/bar/waldo', 'foobar', "path='/foo'", false],
    ['/foo/bar/waldo', 'foobar', "path='/'", false],
    ['/foo/bar/waldo', 'foobar', "path='/foo/bar/waldo/quux'", false],
    ['/foo/bar/waldo', 'foobar', "path_namespace='/foo/bar/waldo'", true],
    ['/foo/bar/waldo', 'foobar', "path_namespace='/foo/bar'", true],
    ['/foo/bar/waldo', 'foobar', "path_namespace='/foo'", true],
    ['/foo/bar/waldo', 'foobar', "path_namespace='/'", true],
    ['/foo/bar/waldo', 'foobar', "path_namespace='/quux'", false],
    ['/', 'foobar', "path_namespace='/'", true],
    ['/foo/bar/waldo', '/foo/bar/waldo', "arg0path='/foo/'", true],
    ['/foo/bar/waldo', '/foo', "arg0path='/foo'", true],
    ['/foo/bar/waldo', '/foo', "arg0path='/foo/bar/waldo'", false],
    ['/foo/bar/waldo', '/foo/', "arg0path='/foo/bar/waldo'", true],
  ];

  for (const [path, arg0, rule, expected] of cases) {
    it(`${rule || '(empty rule)'} on ${path} with arg0 ${arg0}: ${expected ? 'delivered' : 'not delivered'}`, () => {
      assert.equal(delivered(path, arg0, rule), expected);
    });
  }

  it('a string-array arg0 satisfies arg0-has masks and not arg0 masks', () => {
    // sd-bus's arg0has= (not in the dbus1 grammar) becomes the key arg0-has:<value>.
    const filter = sd.filter({ type: 'signal', path: '/foo/bar/waldo', interface: 'waldo.com', member: 'Piep', args: [['foobar']], argTypes: ['as'] }, 'sd-bus');
    assert.ok(covers(filter, sd.mask(['arg0-has:foobar'])));
    assert.ok(!covers(filter, sd.mask(['arg0:foobar'])));
    assert.ok(!covers(filter, sd.mask(['arg0-has:foo_bar'])));
  });

  it("an sd-bus filter lacks arg1 after a string arg0, so only the 'safe' mask lets it through", () => {
    const m: MatchMessage = { type: 'signal', member: 'Piep', args: ['a', 'b'], argTypes: ['s', 's'] };
    const rule = MatchRule.parse("member='Piep',arg1='b'");
    assert.ok(rule.matches(m, owners));
    const filter = sd.filter(m, 'sd-bus');
    assert.ok(!covers(filter, sd.mask(kdbusMatchOf(rule, 'sd-bus').bloomKeys)));
    assert.ok(covers(filter, sd.mask(kdbusMatchOf(rule, 'safe').bloomKeys)));
  });
});

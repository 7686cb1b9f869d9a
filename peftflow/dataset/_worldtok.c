/* The RWKV World tokenizer as a double-array trie: greedy longest match over UTF-8 bytes.
 *
 * Same rule as the reference rwkv.rwkv_tokenizer.TRIE_TOKENIZER: at each position take the
 * longest vocabulary entry that is a prefix of the remaining bytes (every single byte is in
 * the vocabulary, so there always is one). tests/test_tokenizer.py proves the ids identical.
 *
 * Why our own: the prepare stage spends most of its time here. A double array costs one
 * array read and one compare per byte (base[s] + byte, then check[t] == s), and
 * encode_documents() writes uint16 ids straight into a bytes buffer instead of a list of
 * Python ints that numpy must convert again.
 *
 * The vocabulary file (rwkv_vocab_v20230424.txt) has one entry per line: `ID LITERAL LEN`,
 * where LITERAL is a Python str literal ('...' or "...", UTF-8, escapes \x \u \U \n \t \r
 * \\ \' \") or bytes literal (b'...'); LEN is its length in bytes, which we check.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NO_NODE 0xFFFFFFFFu
#define LEAF_BASE 0x7FFFFFFFu /* base of a node without children: base + byte >= size */
#define MAX_TOKEN 256

/* ---- vocabulary parsing ---------------------------------------------------------------- */

typedef struct {
    uint8_t *bytes;    /* all tokens, concatenated */
    uint32_t *offset;  /* token k is bytes[offset[k] .. offset[k] + length[k]) */
    uint16_t *length;
    uint16_t *id;
    size_t count, cap, nbytes, bytes_cap;
} Vocab;

static void vocab_free(Vocab *v) {
    free(v->bytes); free(v->offset); free(v->length); free(v->id);
    memset(v, 0, sizeof(*v));
}

static int put_utf8(uint8_t *out, size_t *n, uint32_t cp) {
    if (*n + 4 > MAX_TOKEN) return -1;
    if (cp < 0x80) { out[(*n)++] = (uint8_t)cp; }
    else if (cp < 0x800) { out[(*n)++] = 0xC0 | (cp >> 6); out[(*n)++] = 0x80 | (cp & 63); }
    else if (cp < 0x10000) {
        if (cp >= 0xD800 && cp < 0xE000) return -1; /* a surrogate has no UTF-8 form */
        out[(*n)++] = 0xE0 | (cp >> 12); out[(*n)++] = 0x80 | ((cp >> 6) & 63);
        out[(*n)++] = 0x80 | (cp & 63);
    } else if (cp < 0x110000) {
        out[(*n)++] = 0xF0 | (cp >> 18); out[(*n)++] = 0x80 | ((cp >> 12) & 63);
        out[(*n)++] = 0x80 | ((cp >> 6) & 63); out[(*n)++] = 0x80 | (cp & 63);
    } else return -1;
    return 0;
}

static int hex_value(const char *s, int digits, uint32_t *value) {
    uint32_t v = 0;
    for (int i = 0; i < digits; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *value = v;
    return 0;
}

/* Parse LITERAL in [p, end) into out; -1 on anything this format does not use. */
static int parse_literal(const char *p, const char *end, uint8_t *out, size_t *n) {
    int is_bytes = 0;
    *n = 0;
    if (p < end && *p == 'b') { is_bytes = 1; p++; }
    if (p >= end || (*p != '\'' && *p != '"')) return -1;
    char quote = *p++;
    if (end - p < 1 || end[-1] != quote) return -1;
    end--; /* the closing quote */
    while (p < end) {
        uint8_t c = (uint8_t)*p;
        if (c != '\\') {
            if (is_bytes && c >= 0x80) return -1;
            if (*n >= MAX_TOKEN) return -1;
            out[(*n)++] = c; /* the file is UTF-8: a str's characters are already bytes */
            p++;
            continue;
        }
        if (p + 1 >= end) return -1;
        char e = p[1];
        uint32_t cp;
        p += 2;
        switch (e) {
        case 'n': cp = '\n'; break;
        case 't': cp = '\t'; break;
        case 'r': cp = '\r'; break;
        case '\\': cp = '\\'; break;
        case '\'': cp = '\''; break;
        case '"': cp = '"'; break;
        case 'x':
            if (end - p < 2 || hex_value(p, 2, &cp)) return -1;
            p += 2;
            if (is_bytes) { /* \xHH in bytes is one raw byte; in str it is code point HH */
                if (*n >= MAX_TOKEN) return -1;
                out[(*n)++] = (uint8_t)cp;
                continue;
            }
            break;
        case 'u':
            if (is_bytes || end - p < 4 || hex_value(p, 4, &cp)) return -1;
            p += 4;
            break;
        case 'U':
            if (is_bytes || end - p < 8 || hex_value(p, 8, &cp)) return -1;
            p += 8;
            break;
        default:
            return -1;
        }
        if (put_utf8(out, n, cp)) return -1;
    }
    return 0;
}

static int vocab_push(Vocab *v, const uint8_t *tok, size_t len, uint32_t id) {
    if (v->count == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 1 << 16;
        void *a = realloc(v->offset, cap * sizeof(uint32_t));
        if (!a) return -1;
        v->offset = a;
        if (!(a = realloc(v->length, cap * sizeof(uint16_t)))) return -1;
        v->length = a;
        if (!(a = realloc(v->id, cap * sizeof(uint16_t)))) return -1;
        v->id = a;
        v->cap = cap;
    }
    if (v->nbytes + len > v->bytes_cap) {
        size_t cap = v->bytes_cap ? v->bytes_cap * 2 : 1 << 19;
        while (cap < v->nbytes + len) cap *= 2;
        void *a = realloc(v->bytes, cap);
        if (!a) return -1;
        v->bytes = a;
        v->bytes_cap = cap;
    }
    memcpy(v->bytes + v->nbytes, tok, len);
    v->offset[v->count] = (uint32_t)v->nbytes;
    v->length[v->count] = (uint16_t)len;
    v->id[v->count] = (uint16_t)id;
    v->nbytes += len;
    v->count++;
    return 0;
}

/* Read the vocabulary; on error set a Python exception naming the line and return -1. */
static int vocab_load(const char *path, Vocab *v) {
    FILE *f = fopen(path, "rb");
    if (!f) { PyErr_SetFromErrnoWithFilename(PyExc_OSError, path); return -1; }
    char line[4096];
    uint8_t tok[MAX_TOKEN];
    long number = 0;
    while (fgets(line, sizeof line, f)) {
        number++;
        size_t len = strlen(line);
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        char *first = strchr(line, ' '), *last = strrchr(line, ' ');
        char *stop = NULL;
        unsigned long id = strtoul(line, &stop, 10);
        size_t n = 0;
        if (!first || first == last || stop != first || id == 0 || id > 0xFFFF
            || parse_literal(first + 1, last, tok, &n)
            || strtoul(last + 1, NULL, 10) != n || n == 0) {
            fclose(f);
            PyErr_Format(PyExc_ValueError, "%s:%ld: not a vocabulary entry this tokenizer "
                         "reads (ID LITERAL LENGTH)", path, number);
            return -1;
        }
        if (vocab_push(v, tok, n, (uint32_t)id)) { fclose(f); PyErr_NoMemory(); return -1; }
    }
    fclose(f);
    if (!v->count) {
        PyErr_Format(PyExc_ValueError, "%s: empty vocabulary", path);
        return -1;
    }
    return 0;
}

/* ---- building the double array ---------------------------------------------------------- */

/* A plain trie first (children as sibling lists), then laid out as a double array. */
typedef struct {
    uint32_t first_child, next_sibling;
    uint16_t id;
    uint8_t byte;
} Node;

typedef struct {
    uint32_t *base, *check;
    uint16_t *value;
    uint32_t size, cap;
} DoubleArray;

static int da_reserve(DoubleArray *da, uint64_t need) {
    if (need <= da->cap) return 0;
    if (need >= LEAF_BASE) return -1;
    uint32_t cap = da->cap ? da->cap : 1 << 16;
    while (cap < need) cap *= 2;
    void *a;
    if (!(a = realloc(da->base, (size_t)cap * sizeof(uint32_t)))) return -1;
    da->base = a;
    if (!(a = realloc(da->check, (size_t)cap * sizeof(uint32_t)))) return -1;
    da->check = a;
    if (!(a = realloc(da->value, (size_t)cap * sizeof(uint16_t)))) return -1;
    da->value = a;
    for (uint32_t i = da->cap; i < cap; i++) {
        da->base[i] = LEAF_BASE;
        da->check[i] = NO_NODE;
        da->value[i] = 0;
    }
    da->cap = cap;
    return 0;
}

static int build(const Vocab *v, DoubleArray *da) {
    size_t max_nodes = v->nbytes + 1;
    Node *nodes = calloc(max_nodes, sizeof(Node));
    uint32_t *slot = malloc(max_nodes * sizeof(uint32_t)); /* node -> double-array slot */
    uint32_t *queue = malloc(max_nodes * sizeof(uint32_t));
    uint32_t root_children[256];
    int ok = -1;
    if (!nodes || !slot || !queue) goto done;
    for (int b = 0; b < 256; b++) root_children[b] = NO_NODE;
    nodes[0].first_child = NO_NODE;
    nodes[0].next_sibling = NO_NODE;
    uint32_t count = 1;
    for (size_t k = 0; k < v->count; k++) {
        const uint8_t *t = v->bytes + v->offset[k];
        uint32_t u = 0;
        for (uint16_t i = 0; i < v->length[k]; i++) {
            uint8_t b = t[i];
            uint32_t c;
            if (u == 0) {
                c = root_children[b];
            } else {
                c = nodes[u].first_child;
                while (c != NO_NODE && nodes[c].byte != b) c = nodes[c].next_sibling;
            }
            if (c == NO_NODE) {
                c = count++;
                nodes[c].byte = b;
                nodes[c].first_child = NO_NODE;
                nodes[c].next_sibling = nodes[u].first_child;
                nodes[u].first_child = c;
                if (u == 0) root_children[b] = c;
            }
            u = c;
        }
        nodes[u].id = v->id[k]; /* a repeated entry: the last one wins, as in the reference */
    }
    /* Breadth first: give each node's children a base where all their slots are free. */
    if (da_reserve(da, 1 << 16)) goto done;
    slot[0] = 0;
    da->check[0] = 0; /* the root's slot is taken */
    da->size = 1;
    uint32_t head = 0, tail = 0, first_free = 1;
    queue[tail++] = 0;
    uint8_t kids[256];
    while (head < tail) {
        uint32_t u = queue[head++];
        int nk = 0;
        for (uint32_t c = nodes[u].first_child; c != NO_NODE; c = nodes[c].next_sibling)
            kids[nk++] = nodes[c].byte;
        if (!nk) continue;
        while (first_free < da->cap && da->check[first_free] != NO_NODE) first_free++;
        uint8_t lo = 255;
        for (int i = 0; i < nk; i++) if (kids[i] < lo) lo = kids[i];
        uint32_t base = first_free > lo ? first_free - lo : 1;
        for (;; base++) {
            if (da_reserve(da, (uint64_t)base + 256)) goto done;
            int i = 0;
            while (i < nk && da->check[base + kids[i]] == NO_NODE) i++;
            if (i == nk) break;
        }
        uint32_t s = slot[u];
        da->base[s] = base;
        for (uint32_t c = nodes[u].first_child; c != NO_NODE; c = nodes[c].next_sibling) {
            uint32_t t = base + nodes[c].byte;
            da->check[t] = s;
            da->value[t] = nodes[c].id;
            slot[c] = t;
            if (t + 1 > da->size) da->size = t + 1;
            queue[tail++] = c;
        }
    }
    ok = 0;
done:
    free(nodes); free(slot); free(queue);
    return ok;
}

/* ---- encoding --------------------------------------------------------------------------- */

/* Token ids of text[0..n) into out (room for n ids); returns how many, or -1 if a byte has
 * no token (a vocabulary without all 256 single bytes). */
static Py_ssize_t encode_bytes(const DoubleArray *da, const uint8_t *text, Py_ssize_t n,
                               uint16_t *out) {
    const uint32_t *base = da->base, *check = da->check;
    const uint16_t *value = da->value;
    const uint32_t size = da->size;
    Py_ssize_t i = 0, k = 0;
    while (i < n) {
        uint32_t s = 0;
        Py_ssize_t j = i, best_len = 0;
        uint16_t best = 0;
        while (j < n) {
            uint32_t t = base[s] + text[j];
            if (t >= size || check[t] != s) break;
            s = t;
            j++;
            if (value[s]) { best = value[s]; best_len = j - i; }
        }
        if (!best_len) return -1;
        out[k++] = best;
        i += best_len;
    }
    return k;
}

typedef struct {
    PyObject_HEAD
    DoubleArray da;
    Py_ssize_t vocab_size;
} Tokenizer;

static void Tokenizer_dealloc(Tokenizer *self) {
    free(self->da.base); free(self->da.check); free(self->da.value);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Tokenizer_init(Tokenizer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"vocab_path", NULL};
    PyObject *path_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&", kwlist, PyUnicode_FSConverter, &path_obj))
        return -1;
    Vocab v = {0};
    int rc = vocab_load(PyBytes_AS_STRING(path_obj), &v);
    Py_DECREF(path_obj);
    if (rc) { vocab_free(&v); return -1; }
    free(self->da.base); free(self->da.check); free(self->da.value);
    memset(&self->da, 0, sizeof(self->da));
    if (build(&v, &self->da)) { vocab_free(&v); PyErr_NoMemory(); return -1; }
    self->vocab_size = (Py_ssize_t)v.count;
    vocab_free(&v);
    return 0;
}

static PyObject *no_token_error(void) {
    PyErr_SetString(PyExc_ValueError, "a byte has no token in this vocabulary");
    return NULL;
}

static PyObject *Tokenizer_encode(Tokenizer *self, PyObject *text) {
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &n);
    if (!utf8) return NULL;
    uint16_t *ids = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(uint16_t));
    if (!ids) return PyErr_NoMemory();
    Py_ssize_t k = encode_bytes(&self->da, (const uint8_t *)utf8, n, ids);
    if (k < 0) { PyMem_Free(ids); return no_token_error(); }
    PyObject *list = PyList_New(k);
    if (list) {
        for (Py_ssize_t i = 0; i < k; i++) {
            PyObject *item = PyLong_FromLong(ids[i]);
            if (!item) { Py_CLEAR(list); break; }
            PyList_SET_ITEM(list, i, item);
        }
    }
    PyMem_Free(ids);
    return list;
}

/* encode_documents(texts, eod) -> (tokens, sizes): every text's ids followed by `eod`, as
 * native uint16 bytes, and each document's length (eod included) as native int32 bytes. */
static PyObject *Tokenizer_encode_documents(Tokenizer *self, PyObject *args) {
    PyObject *seq;
    unsigned int eod;
    if (!PyArg_ParseTuple(args, "OI", &seq, &eod)) return NULL;
    if (eod > 0xFFFF) { PyErr_SetString(PyExc_ValueError, "eod must fit uint16"); return NULL; }
    PyObject *fast = PySequence_Fast(seq, "texts must be a sequence of str");
    if (!fast) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    Py_ssize_t total = 0;
    for (Py_ssize_t d = 0; d < count; d++) { /* room: one id per byte, plus the eods */
        Py_ssize_t n;
        if (!PyUnicode_Check(items[d])) {
            Py_DECREF(fast);
            return PyErr_Format(PyExc_TypeError, "texts[%zd] is not a str", d);
        }
        if (!PyUnicode_AsUTF8AndSize(items[d], &n)) { Py_DECREF(fast); return NULL; }
        total += n + 1;
    }
    PyObject *tokens = PyBytes_FromStringAndSize(NULL, total * (Py_ssize_t)sizeof(uint16_t));
    PyObject *sizes = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(int32_t));
    if (!tokens || !sizes) goto fail;
    uint16_t *out = (uint16_t *)PyBytes_AS_STRING(tokens);
    int32_t *size_out = (int32_t *)PyBytes_AS_STRING(sizes);
    Py_ssize_t k = 0;
    for (Py_ssize_t d = 0; d < count; d++) {
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(items[d], &n); /* cached by the loop above */
        Py_ssize_t got = encode_bytes(&self->da, (const uint8_t *)utf8, n, out + k);
        if (got < 0) { no_token_error(); goto fail; }
        if (got + 1 > INT32_MAX) { PyErr_SetString(PyExc_OverflowError, "document too long"); goto fail; }
        out[k + got] = (uint16_t)eod;
        k += got + 1;
        size_out[d] = (int32_t)(got + 1);
    }
    Py_DECREF(fast);
    if (_PyBytes_Resize(&tokens, k * (Py_ssize_t)sizeof(uint16_t))) { Py_DECREF(sizes); return NULL; }
    return Py_BuildValue("(NN)", tokens, sizes);
fail:
    Py_DECREF(fast);
    Py_XDECREF(tokens);
    Py_XDECREF(sizes);
    return NULL;
}

static PyObject *Tokenizer_vocab_size(Tokenizer *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSsize_t(self->vocab_size);
}

static PyMethodDef Tokenizer_methods[] = {
    {"encode", (PyCFunction)Tokenizer_encode, METH_O,
     "encode(text) -> list[int]: the token ids of a str."},
    {"encode_documents", (PyCFunction)Tokenizer_encode_documents, METH_VARARGS,
     "encode_documents(texts, eod) -> (tokens: bytes, sizes: bytes): the ids of every text "
     "followed by eod (native uint16), and each document's length with its eod (native int32)."},
    {"vocab_size", (PyCFunction)Tokenizer_vocab_size, METH_NOARGS,
     "vocab_size() -> int: entries read from the vocabulary file."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TokenizerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "peftflow.dataset._worldtok.Tokenizer",
    .tp_doc = "Tokenizer(vocab_path): the RWKV World tokenizer (greedy longest match).",
    .tp_basicsize = sizeof(Tokenizer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tokenizer_init,
    .tp_dealloc = (destructor)Tokenizer_dealloc,
    .tp_methods = Tokenizer_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_worldtok",
    "The RWKV World tokenizer as a double-array trie (see _worldtok.c).", -1, NULL,
};

PyMODINIT_FUNC PyInit__worldtok(void) {
    if (PyType_Ready(&TokenizerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&TokenizerType);
    if (PyModule_AddObject(m, "Tokenizer", (PyObject *)&TokenizerType) < 0) {
        Py_DECREF(&TokenizerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* Spam rules for the native slot, version 1: a few keywords.
 *
 * The host declares int classify(const char *text): 1 for spam, 0 if not.
 * Built by the engine with cc -shared -fPIC -O2; `symbols spam_native@1`
 * shows this file's .dynsym, as nm -D does.
 */
#include <ctype.h>
#include <string.h>

/* Read-only data: R in the symbol table. */
const int THRESHOLD = 50;

/* Constant pointers still need relocating when the object is mapped, so
 * they live in .data.rel.ro: D, not R. */
const char *const KEYWORDS[] = {"free", "win", "click now"};

/* Zero-initialised data: B (.bss). */
long messages_seen;

int keyword_hits(const char *text) {
    char lowered[512];
    size_t i = 0;
    for (; text[i] != '\0' && i < sizeof lowered - 1; i++) {
        lowered[i] = (char)tolower((unsigned char)text[i]);
    }
    lowered[i] = '\0';
    int hits = 0;
    for (size_t k = 0; k < sizeof KEYWORDS / sizeof KEYWORDS[0]; k++) {
        if (strstr(lowered, KEYWORDS[k]) != NULL) {
            hits++;
        }
    }
    return hits;
}

int classify(const char *text) {
    messages_seen++;
    int score = 30 * keyword_hits(text);
    return score >= THRESHOLD;
}

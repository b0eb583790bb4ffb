/* Spam rules for the native slot, version 2: more keywords, and shouting.
 *
 * Same interface as version 1: int classify(const char *text).
 */
#include <ctype.h>
#include <string.h>

const int THRESHOLD = 50;

const char *const KEYWORDS[] = {"free", "win", "click now", "limited offer", "no prescription"};

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

/* More than 30% capital letters, or "!!!". */
int shouting(const char *text) {
    int letters = 0, upper = 0;
    for (const char *p = text; *p != '\0'; p++) {
        if (isalpha((unsigned char)*p)) {
            letters++;
            upper += isupper((unsigned char)*p) != 0;
        }
    }
    return strstr(text, "!!!") != NULL || (letters >= 3 && upper * 10 > letters * 3);
}

int classify(const char *text) {
    messages_seen++;
    int score = 25 * (keyword_hits(text) + shouting(text));
    return score >= THRESHOLD;
}

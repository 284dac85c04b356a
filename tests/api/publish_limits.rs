//! Size limits and bounded broker state: message headers, retry-delay ladder, consumer cap.

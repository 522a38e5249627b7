-- The seed's init script: the MES database beside New API's, in utf8mb4 (emoji round-trip).
-- MES also creates it on first start if it is missing; this makes it exist from the outset.
CREATE DATABASE IF NOT EXISTS `new-api-mes` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
